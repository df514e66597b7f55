"""The one way to open the lab's history: :func:`open_lab` gives a :class:`lsm_core.lab.lab.Lab`, its
database upgraded to this code's schema and its model store's packages registered (lsm_core.lab.registry).

The command line, ``serve``, the worker, the pages and the tests all open it here, so none of them reads the
environment or builds a store on its own.
"""

from __future__ import annotations

from db.session import make_engine, session_factory, upgrade
from lsm_core.lab import settings as settings_module
from lsm_core.lab.lab import Lab
from lsm_core.lab.settings import Settings


def open_lab(settings: Settings | None = None, sync: bool = True) -> Lab:
    """The lab of ``settings`` (default: this process's): its database upgraded to this code's schema and, with
    ``sync``, every package of its model store registered."""
    settings = settings or settings_module.current()
    engine = make_engine(settings.database_url)
    upgrade(engine)
    lab = Lab(session_factory(engine), settings, engine)
    if sync:
        from lsm_core.lab.registry import sync_models  # torch: only where the store's models are registered

        sync_models(lab)
    return lab
