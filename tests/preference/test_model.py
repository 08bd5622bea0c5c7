"""PreferenceModel's item side: genre tags and the catalogue standardisation (pure torch, no Ray)."""

import torch

from icg_rl.preference.model import PreferenceModel

ITEMS = ["a", "b", "c", "a|v1", "b|v1"]  # items, then covers, as compute_item_features orders them
TAGS = {"a": ["horror"], "b": ["romance", "horror"], "c": []}


def model(**kwargs) -> PreferenceModel:
    torch.manual_seed(0)
    m = PreferenceModel(["u1", "u2"], ITEMS, item_dim=4, image_dim=4, user_dim=8, hidden_dim=8, **kwargs)
    features = torch.nn.functional.normalize(torch.randn(len(ITEMS), 4) + torch.tensor([2.0, 0, 0, 0]), dim=-1)
    m.set_item_features(features, TAGS)
    return m


def test_a_cover_carries_its_items_tags_and_the_side_is_standardised():
    m = model(tag_vocab=["horror", "romance"], standardize=True)
    rows = torch.tensor([m.item_index[k] for k in ITEMS])
    assert m.item_tags[rows].tolist() == [[1, 0], [1, 1], [0, 0], [1, 0], [1, 1]]  # "a|v1" is a horror cover
    side = m.item_side(m.item_features[rows], rows)  # (5, 4 + 2)
    assert side.shape == (5, 6)
    torch.testing.assert_close(side.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(side.std(0), torch.ones(6), atol=1e-5, rtol=0)
    assert m.item_tags[0].sum() == 0  # the padding / unknown row has no tags


def test_tags_change_the_score_of_the_same_image():
    m = model(tag_vocab=["horror", "romance"], standardize=True)
    image = torch.randn(1, 4).expand(2, 4)
    items = m.item_indices(["a", "c"])  # same pixels, a horror item vs an untagged one
    logits = m(torch.tensor([1, 1]), torch.zeros(2, 3, dtype=torch.long), image, items)
    assert not torch.isclose(logits[0], logits[1])


def test_a_model_saved_without_tags_or_statistics_still_loads():
    plain = model()  # the layout of models trained before tags existed: no item_tags / side_* in the state dict
    state = plain.state_dict()
    assert not any(k.startswith(("item_tags", "side_")) for k in state)
    again = PreferenceModel(**plain.config)
    again.load_state_dict(state)  # strict
    x = torch.randn(3, 4)
    args = (torch.tensor([1, 2, 0]), torch.zeros(3, 2, dtype=torch.long), x, torch.tensor([1, 2, 3]))
    torch.testing.assert_close(again(*args), plain(*args))


def test_known_users_start_as_their_history():
    m = model(standardize=True)
    assert torch.count_nonzero(m.user_encoder.id_embedding.weight) == 0  # ids learn a deviation, from zero


def test_pooling_rows_of_the_item_table_matches_pooling_gathered_rows():
    """`pool_table` (one weighted embedding_bag) is `pool` on the gathered rows: values and gradients, including
    padding, a user with no history (the population embedding) and a known id."""
    torch.manual_seed(0)
    m = model()
    encoder = m.user_encoder
    table = torch.randn(len(ITEMS) + 1, 8, requires_grad=True)
    history = torch.tensor([[1, 4, 2, 0], [0, 0, 0, 0], [5, 5, 3, 1]])  # padding, no history, a repeated cover
    users = torch.tensor([0, 0, 2])
    with torch.no_grad():
        encoder.id_embedding.weight.normal_()
    fast = encoder.pool_table(users, table, history)
    (grad_fast,) = torch.autograd.grad(fast.square().sum(), table)
    slow = encoder.pool(users, table[history], history > 0)
    (grad_slow,) = torch.autograd.grad(slow.square().sum(), table)
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(grad_fast, grad_slow)
    torch.testing.assert_close(fast[1], encoder.population.detach() * 1.0)  # cold start: the population
    assert grad_fast[5].abs().sum() > 0 and grad_fast[0].abs().sum() == 0  # padding row 0 gets no gradient


def test_the_out_folder_of_the_preference_command_loads_as_the_model(tmp_path):
    """`python -m icg_rl.preference --out OUT` saves to OUT/model/: OUT and OUT/model name the same model."""
    from icg_rl.paths import PREFERENCE_CONFIG, preference_model_folder
    from icg_rl.preference.model import CONFIG_FILE, load_preference_model, save_preference_model

    assert PREFERENCE_CONFIG == CONFIG_FILE  # paths sits below preference and names the file itself
    saved = model(tag_vocab=["horror", "romance"], standardize=True)
    save_preference_model(saved, tmp_path / "model", clip="clip", history_len=3)
    assert preference_model_folder(tmp_path) == preference_model_folder(tmp_path / "model") == tmp_path / "model"
    args = (torch.tensor([1, 2]), torch.zeros(2, 3, dtype=torch.long), torch.randn(2, 4), torch.tensor([1, 4]))
    for given in (tmp_path, tmp_path / "model"):
        loaded, config = load_preference_model(given)
        assert config["history_len"] == 3
        torch.testing.assert_close(loaded(*args), saved.eval()(*args))


def test_a_folder_without_a_model_says_what_it_holds_and_what_to_pass(tmp_path):
    import pytest

    from icg_rl.preference.model import load_preference_model

    def message(folder) -> str:
        with pytest.raises(FileNotFoundError) as error:
            load_preference_model(folder)
        text = str(error.value)
        assert text.startswith(f"reward.preference: {folder} ")
        assert "the --out folder of `python -m icg_rl.preference --out DIR`" in text and "config.json" in text
        return text

    (tmp_path / "empty").mkdir()
    assert "empty is empty" in message(tmp_path / "empty")
    assert "does not exist" in message(tmp_path / "missing")
    wrong = tmp_path / "wrong"
    (wrong / "model").mkdir(parents=True)  # a --out folder whose training never saved the model
    (wrong / "model" / "item_features.npy").write_bytes(b"")
    for i in range(12):
        (wrong / f"f{i:02d}.txt").write_text("")
    text = message(wrong)
    assert "holds f00.txt, f01.txt" in text and "f09.txt and 3 more" in text and "f10.txt" not in text  # 10 shown
    assert "its model/ holds item_features.npy" in text
