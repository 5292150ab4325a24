"""syft 0.9.5's SQLite store as the operator's tools see it offline (site stopped or
a copy of it): where its databases are, the blob paths it recorded absolutely, its
user accounts, and whether each published dataset's private asset still loads.

syft keeps objects of 1 MB and more as files under `storage/<uid>/blob/` and records
each file's absolute path inside a serialised `SecureFilePathLocation`; a site restored
into another folder must have those paths rewritten (`rewrite_blob_paths`), through
syft's own serde, never by editing bytes.

Must never print, log or return private data: `load_assets` returns names and cohort
ids only. Imports syft lazily (about 9 s); nothing else of the site needs it offline.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from policies.contract.errors import MedsyftError

SQLITE_MAGIC = b"SQLite format 3\x00"
_BLOB_NAME = re.compile(r"^[0-9a-f]{32}$")


class StoreError(MedsyftError, RuntimeError):
    pass


def is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def database(storage: Path, server_uid: str) -> Path:
    """syft's store of the site with this server id under its storage folder."""
    return storage / server_uid / "db" / f"{server_uid}_json.db"


def blob_dir(storage: Path, server_uid: str) -> Path:
    return storage / server_uid / "blob"


def _syft() -> None:
    import syft  # noqa: F401  (registers every serde type)


def _rows(db: Path, table: str) -> list[tuple[str, str]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        has = con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                          (table,)).fetchone()
        return con.execute(f'SELECT id, fields FROM "{table}"').fetchall() if has else []
    finally:
        con.close()


def count_users(db: Path) -> int:
    return len(_rows(db, "User"))


def rewrite_blob_paths(db: Path, new_blob_dir: Path) -> int:
    """Point every blob entry at `new_blob_dir/<its file name>`; returns how many
    changed. A recorded name that is not a syft uid is refused (never followed)."""
    _syft()
    from syft.serde.json_serde import deserialize_json, serialize_json

    con = sqlite3.connect(db, isolation_level=None)
    changed = 0
    try:
        con.execute("BEGIN IMMEDIATE")
        for row_id, fields in con.execute('SELECT id, fields FROM "BlobStorageEntry"'
                                          ).fetchall():
            entry = deserialize_json(json.loads(fields))
            location = entry.location
            name = Path(str(location.path)).name
            if not _BLOB_NAME.match(name):
                raise StoreError(f"blob entry {row_id}: recorded file name {name!r} is not "
                                 "a syft uid")
            new_path = str(new_blob_dir / name)
            if location.path == new_path:
                continue
            location.path = new_path
            con.execute('UPDATE "BlobStorageEntry" SET fields = ? WHERE id = ?',
                        (json.dumps(serialize_json(entry)), row_id))
            changed += 1
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.close()
    return changed


@dataclass(frozen=True)
class LoadedAsset:
    dataset: str
    asset: str
    cohort_id: str | None
    problem: str | None  # None: it loaded


def load_assets(db: Path, read_blob_dir: Path) -> list[LoadedAsset]:
    """Load each dataset's private asset as syft would (its blob deserialised), reading
    blobs from `read_blob_dir`; report the cohort id it holds, or what failed."""
    _syft()
    from syft.serde.deserialize import _deserialize
    from syft.serde.json_serde import deserialize_json

    actions = dict(_rows(db, "ActionObject"))
    blobs = {}
    for _, fields in _rows(db, "BlobStorageEntry"):
        entry = deserialize_json(json.loads(fields))
        blobs[entry.id.no_dash] = Path(str(entry.location.path)).name
    out = []
    for _, fields in _rows(db, "Dataset"):
        dataset = deserialize_json(json.loads(fields))
        for asset in dataset.asset_list:
            out.append(_load_one(dataset.name, asset, actions, blobs, read_blob_dir,
                                 _deserialize, deserialize_json))
    return out


def _load_one(dataset: str, asset, actions: dict, blobs: dict, read_blob_dir: Path,
              _deserialize, deserialize_json) -> LoadedAsset:
    def fail(problem: str) -> LoadedAsset:
        return LoadedAsset(dataset, asset.name, None, problem)

    fields = actions.get(asset.action_id.no_dash)
    if fields is None:
        return fail("its action object is missing from syft's store")
    obj = deserialize_json(json.loads(fields))
    private = getattr(obj, "private_obj", obj)
    blob_id = getattr(private, "syft_blob_storage_entry_id", None)
    if blob_id is None:
        data = getattr(private, "syft_action_data_cache", None)
    else:
        name = blobs.get(blob_id.no_dash)
        if name is None:
            return fail(f"its blob entry {blob_id.no_dash} is missing")
        path = read_blob_dir / name
        if not path.is_file():
            return fail(f"its blob file {name} is missing")
        try:
            data = _deserialize(path.read_bytes(), from_bytes=True)
        except Exception as e:  # noqa: BLE001 - the reason, never the bytes
            return fail(f"its blob file {name} does not load ({type(e).__name__})")
    cohort = data.get("cohort_id") if isinstance(data, dict) else None
    if cohort is None:
        return fail("it holds no cohort id (not a medsyft cohort)")
    return LoadedAsset(dataset, asset.name, str(cohort), None)
