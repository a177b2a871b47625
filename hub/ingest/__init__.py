"""hub/ingest"""
