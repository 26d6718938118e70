"""Alembic schema migrations of the job store (see `dicom_node.queue.jobstore.migrate`)."""
