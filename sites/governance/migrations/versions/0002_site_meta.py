"""site_meta: which site the database belongs to (its syft server id) and since when.

A database restored or pointed at from another site's folder is refused by the site
whose server id differs (`medsyft site doctor`, `site up`).
"""

import time

import sqlalchemy as sa
from alembic import context, op

revision = "0002_site_meta"
down_revision = "0001_baseline"


def upgrade() -> None:
    meta = op.create_table(
        "site_meta",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    rows = [{"key": "schema_history_started_at", "value": repr(time.time())}]
    server_uid = context.config.attributes.get("server_uid")
    if server_uid:
        rows.append({"key": "server_uid", "value": server_uid})
    op.bulk_insert(meta, rows)


def downgrade() -> None:
    raise RuntimeError("downgrades are refused: restore a backup taken before the upgrade")
