"""The SQL history (SQLAlchemy): schema, sessions, queries. Never imports torch.

Built by the history/queue issue; until then the model store on disk is the only registry.
"""
