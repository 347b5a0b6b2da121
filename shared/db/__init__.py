"""The database: ORM models, sessions, migrations and the data layer (``store``)."""
