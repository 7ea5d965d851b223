"""The seed's attach flow as a library call, with rollback and attachment records."""
