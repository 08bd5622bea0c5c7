"""Run checkpoints (docs/architecture.md §8): no crash leaves one that looks intact, verified on read, resumable.

    store = CheckpointStore("runs/x/checkpoints")          # a local folder or any pyarrow filesystem URI (s3://…)
    store.write("iter_000010", {"trainer_state.json": b"…", "icg/icg.safetensors": b"…", …})
    name, files = store.resume("auto")                      # newest intact checkpoint (None, None: none yet)

A checkpoint is a folder of files plus `manifest.json` (size and sha256 of each); "intact" means the manifest is
there and every file it lists matches it. How a write keeps a crash from leaving a checkpoint that looks intact:
- a local folder: written beside its final name and renamed into place (one atomic rename);
- an object store (s3://, gs://, …): it has no directory rename (pyarrow's S3 `move` of a prefix fails; copying
  key by key would not be atomic either), so the files go straight under the final prefix and `manifest.json` is
  written last. Each object appears whole or not at all, so an upload cut short leaves no manifest, or a manifest
  naming the bytes that should be there.
Only then does the `latest` pointer move (locally written then renamed; on an object store one PUT, itself atomic):
a crash at any moment leaves the previous checkpoint and pointer intact. Reading checks every file against the
manifest; `resume("auto")` falls back to the next older checkpoint when the newest is unfinished, truncated or
corrupt, and says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from icg_rl.config import ConfigError

log = logging.getLogger(__name__)
MANIFEST, LATEST = "manifest.json", "latest"
NAME = re.compile(r"^iter_\d{6,}$")
ALLOWED = ("a folder (relative or absolute), file:///abs/path, or a pyarrow filesystem URI: s3://bucket/prefix "
           "(query parameters region=…, endpoint_override=HOST:PORT and scheme=http|https for an S3-compatible "
           "server, allow_bucket_creation=true; credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the "
           "other usual AWS sources), gs://bucket/prefix")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (missing, truncated, corrupt); the message names the file."""


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:06d}"


def shown(uri: str) -> str:
    """`uri` for logs and messages: keys given inline (s3://KEY:SECRET@bucket/…, which pyarrow accepts) hidden."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


class CheckpointStore:
    def __init__(self, storage_path: str | Path, keep: int = 3):
        import pyarrow.fs

        uri = str(storage_path)
        if "://" not in uri:
            uri = str(Path(uri).resolve())
            Path(uri).mkdir(parents=True, exist_ok=True)
        self.uri, self.keep = shown(uri), keep  # self.uri is only ever shown; self.fs carries any inline keys
        try:
            self.fs, self.root = pyarrow.fs.FileSystem.from_uri(uri)
        except ValueError as err:  # pyarrow.ArrowInvalid: unknown scheme, query parameter, missing bucket
            raise ConfigError(f"train.storage_path: {self.uri!r} is not a usable location ({err}); allowed: "
                              f"{ALLOWED}") from err
        # a local folder can rename a whole checkpoint into place; nothing else pyarrow reaches is trusted to
        # (object stores cannot at all), so those take the manifest-last path in write()
        self.local = isinstance(self.fs, pyarrow.fs.LocalFileSystem)
        if not self.local and not self.root.strip("/"):  # `s3://` parses, to the whole account: refuse it
            raise ConfigError(f"train.storage_path: {self.uri!r} names no bucket; allowed: {ALLOWED}")
        try:
            self.fs.create_dir(self.root, recursive=True)
        except OSError as err:  # a missing bucket, an unreachable endpoint, refused credentials: say where
            if self.local:
                raise
            raise ConfigError(f"train.storage_path: {self.uri!r} cannot be reached or created ({err}); allowed: "
                              f"{ALLOWED}") from err

    def where(self, *parts: str, query: bool = True) -> str:
        """A location under the store as the user would write it; a URI's query (`?endpoint_override=…`) stays
        last, so the result is itself a usable URI (and `--resume` value). Messages about one file leave the query
        out (`query=False`): it is the same for every file, and the file name should end the path."""
        base, sep, rest = self.uri.partition("?") if not self.local else (self.uri, "", "")  # a folder's `?` is a name
        return "/".join([base.rstrip("/"), *parts]) + (sep + rest if query else "")

    # ---------------------------------------------------------------------------------------------------- write
    def write(self, name: str, files: dict[str, bytes]) -> str:
        """Write a checkpoint so that no crash leaves it looking intact, move `latest` to it, prune the older ones
        beyond `keep`; returns its location."""
        if not NAME.match(name):
            raise ValueError(f"checkpoint name {name!r}: expected iter_NNNNNN")
        final = f"{self.root}/{name}"
        # locally: a scratch folder beside the final name. On an object store the files go under the final prefix
        # itself, so a leftover of that name (a crash while writing it, or a run resumed from before it) goes first:
        # the new files must not land beside its stale manifest
        folder = f"{self.root}/.{name}.tmp" if self.local else final
        self._delete(folder)
        manifest = {}
        for rel, payload in sorted(files.items()):
            self._write_bytes(f"{folder}/{rel}", payload)
            manifest[rel] = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
        # the manifest last: its presence is what says every file above was written whole
        self._write_bytes(f"{folder}/{MANIFEST}", json.dumps(manifest, indent=1, sort_keys=True).encode())
        if self.local:
            self._delete(final)
            self.fs.move(folder, final)
            self._write_bytes(f"{self.root}/.{LATEST}.tmp", name.encode())
            self.fs.move(f"{self.root}/.{LATEST}.tmp", f"{self.root}/{LATEST}")
        else:
            self._write_bytes(f"{self.root}/{LATEST}", name.encode())
        # only checkpoints older than this one are pruned: a newer name left by an interrupted or abandoned run
        # must not push out the one just written (the `latest` pointer, not the name, says which is current)
        older = [n for n in self.names() if n < name]
        for old in older[: max(0, len(older) - (self.keep - 1))] if self.keep > 0 else []:
            self._delete(f"{self.root}/{old}")
        return self.where(name)

    # ----------------------------------------------------------------------------------------------------- read
    def names(self) -> list[str]:
        """Checkpoint names present (finished or not: read() tells), oldest first."""
        import pyarrow.fs

        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.root, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory and NAME.match(i.base_name))

    def latest(self) -> str | None:
        try:
            with self.fs.open_input_stream(f"{self.root}/{LATEST}") as f:
                return f.read().decode().strip() or None
        except (FileNotFoundError, OSError):
            return None

    def read(self, name: str) -> dict[str, bytes]:
        """Every file of a checkpoint, verified against its manifest (CheckpointError naming the bad file)."""
        folder = f"{self.root}/{name}"
        try:
            manifest = json.loads(self._read_bytes(f"{folder}/{MANIFEST}"))
        except (FileNotFoundError, OSError) as err:
            raise CheckpointError(f"{self.where(name, MANIFEST, query=False)}: missing ({err}); the checkpoint was not "
                                  f"finished") from err
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{self.where(name, MANIFEST, query=False)}: not valid JSON ({err})") from err
        files = {}
        for rel, expected in manifest.items():
            path = self.where(name, rel, query=False)
            try:
                payload = self._read_bytes(f"{folder}/{rel}")
            except (FileNotFoundError, OSError) as err:
                raise CheckpointError(f"{path}: missing ({err})") from err
            if len(payload) != expected["bytes"]:
                raise CheckpointError(f"{path}: {len(payload)} bytes, the manifest says {expected['bytes']} "
                                      f"(truncated)")
            if hashlib.sha256(payload).hexdigest() != expected["sha256"]:
                raise CheckpointError(f"{path}: sha256 differs from the manifest (corrupt)")
            files[rel] = payload
        return files

    def resume(self, what: str) -> tuple[str | None, dict[str, bytes] | None]:
        """`auto`: the newest intact checkpoint (falling back past unusable ones, with a warning), or (None, None)
        when there is none. Anything else names one checkpoint (a name here, or its full path or URI, a query
        such as `?endpoint_override=…` included): no fallback."""
        if what != "auto":
            name = Path((str(what) if self.local else str(what).split("?", 1)[0]).rstrip("/")).name
            if name not in self.names():
                raise CheckpointError(f"--resume {shown(str(what))}: no checkpoint {name!r} in {self.uri} "
                                      f"(have: {self.names()})")
            return name, self.read(name)
        pointer, present = self.latest(), self.names()
        candidates = ([pointer] if pointer in present else []) + [n for n in reversed(present) if n != pointer]
        for i, name in enumerate(candidates):
            try:
                files = self.read(name)
            except CheckpointError as err:
                following = candidates[i + 1] if i + 1 < len(candidates) else None
                log.warning("checkpoint %s is unusable: %s; %s", name, err,
                            f"falling back to {following}" if following else "no older checkpoint to fall back to")
                continue
            return name, files
        return None, None

    # ------------------------------------------------------------------------------------------------- helpers
    def _write_bytes(self, path: str, payload: bytes) -> None:
        if self.local:  # an object store has no folders to make (pyarrow would only add empty marker objects)
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path) as f:
            f.write(payload)

    def _read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def _delete(self, path: str) -> None:
        import pyarrow.fs

        if self.fs.get_file_info(path).type == pyarrow.fs.FileType.Directory:
            if not self.local:  # a prefix is deleted key by key: the manifest first, so no moment looks intact
                try:
                    self.fs.delete_file(f"{path}/{MANIFEST}")
                except (FileNotFoundError, OSError):
                    pass
            self.fs.delete_dir(path)


def subtree(files: dict[str, bytes], prefix: str) -> dict[str, bytes]:
    """The files under `prefix/`, with the prefix removed."""
    return {k[len(prefix) + 1:]: v for k, v in files.items() if k.startswith(prefix + "/")}
