"""Run checkpoints (docs/architecture.md §8): written atomically, verified on read, resumable with a fallback.

    store = CheckpointStore("runs/x/checkpoints")          # a local folder or any pyarrow filesystem URI (s3://…)
    store.write("iter_000010", {"trainer_state.json": b"…", "icg/icg.safetensors": b"…", …})
    name, files = store.resume("auto")                      # newest intact checkpoint (None, None: none yet)

A checkpoint is a folder of files plus `manifest.json` (size and sha256 of each). It is written beside its final
name and renamed into place, and only then does the `latest` pointer move (itself written then renamed): a crash
at any moment leaves the previous checkpoint and pointer intact. Reading checks every file against the manifest;
`resume("auto")` falls back to the next older checkpoint when the newest is truncated or corrupt, and says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)
MANIFEST, LATEST = "manifest.json", "latest"
NAME = re.compile(r"^iter_\d{6,}$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (missing, truncated, corrupt); the message names the file."""


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:06d}"


class CheckpointStore:
    def __init__(self, storage_path: str | Path, keep: int = 3):
        import pyarrow.fs

        uri = str(storage_path)
        if "://" not in uri:
            uri = str(Path(uri).resolve())
            Path(uri).mkdir(parents=True, exist_ok=True)
        self.fs, self.root = pyarrow.fs.FileSystem.from_uri(uri)
        self.uri, self.keep = uri, keep
        self.fs.create_dir(self.root, recursive=True)

    # ---------------------------------------------------------------------------------------------------- write
    def write(self, name: str, files: dict[str, bytes]) -> str:
        """Write a checkpoint atomically, move `latest` to it, prune all but the newest `keep`; returns its path."""
        if not NAME.match(name):
            raise ValueError(f"checkpoint name {name!r}: expected iter_NNNNNN")
        final, tmp = f"{self.root}/{name}", f"{self.root}/.{name}.tmp"
        self._delete(tmp)
        manifest = {}
        for rel, payload in sorted(files.items()):
            self._write_bytes(f"{tmp}/{rel}", payload)
            manifest[rel] = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
        self._write_bytes(f"{tmp}/{MANIFEST}", json.dumps(manifest, indent=1, sort_keys=True).encode())
        self._delete(final)
        self.fs.move(tmp, final)
        self._write_bytes(f"{self.root}/.{LATEST}.tmp", name.encode())
        self.fs.move(f"{self.root}/.{LATEST}.tmp", f"{self.root}/{LATEST}")
        for old in self.names()[: -self.keep] if self.keep > 0 else []:
            self._delete(f"{self.root}/{old}")
        return f"{self.uri}/{name}"

    # ----------------------------------------------------------------------------------------------------- read
    def names(self) -> list[str]:
        """Checkpoint names present, oldest first."""
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
            raise CheckpointError(f"{self.uri}/{name}/{MANIFEST}: missing ({err}); the checkpoint was not "
                                  f"finished") from err
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{self.uri}/{name}/{MANIFEST}: not valid JSON ({err})") from err
        files = {}
        for rel, expected in manifest.items():
            path = f"{self.uri}/{name}/{rel}"
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
        """`auto`: the newest intact checkpoint (falling back past corrupt ones, with a warning), or (None, None)
        when there is none. Anything else names one checkpoint (a name here, or its full path): no fallback."""
        if what != "auto":
            name = Path(str(what).rstrip("/")).name
            if name not in self.names():
                raise CheckpointError(f"--resume {what}: no checkpoint {name!r} in {self.uri} (have: {self.names()})")
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
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path) as f:
            f.write(payload)

    def _read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def _delete(self, path: str) -> None:
        import pyarrow.fs

        if self.fs.get_file_info(path).type == pyarrow.fs.FileType.Directory:
            self.fs.delete_dir(path)


def subtree(files: dict[str, bytes], prefix: str) -> dict[str, bytes]:
    """The files under `prefix/`, with the prefix removed."""
    return {k[len(prefix) + 1:]: v for k, v in files.items() if k.startswith(prefix + "/")}
