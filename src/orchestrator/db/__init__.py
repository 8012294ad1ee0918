"""The database layer: schema, migrations, and one module of queries per table.
All SQL lives here."""
