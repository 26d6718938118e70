"""Alembic environment: migrations run on the connection the job store hands over.

Run through `dicom_node.queue.jobstore.migrate` (node start, `ldct-node db upgrade`); the
connection arrives in `config.attributes["connection"]`, so no URL lives in an ini file.
"""

from __future__ import annotations

from alembic import context

from dicom_node.queue.jobstore import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through dicom_node.queue.jobstore.migrate(), not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
