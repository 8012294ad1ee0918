"""Tilda website export import: parsing, safe archive reading, the importer, the API client."""
