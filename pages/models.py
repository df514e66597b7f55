"""Models page: the registered classifiers."""
import pandas as pd
import streamlit as st

from lsm_core.models import ModelStore
from lsm_core.tasks import TASK_TITLES

st.title("Models")
st.caption("Classifiers registered in this lab's model store. Demo models are trained on synthetic cells only.")

packages = ModelStore().packages()
if not packages:
    st.info("No models are registered yet. `python -m lsm_core demo` registers the synthetic demo models.")
else:
    rows = [
        {
            "model": p.manifest.name,
            "version": p.manifest.version,
            "task": TASK_TITLES.get(p.manifest.task, p.manifest.task),
            "classes": ", ".join(p.manifest.classes),
            "architecture": p.manifest.architecture,
            "kind": "synthetic demo" if p.manifest.demo else "trained on lab data",
            "accuracy": p.manifest.metrics.get("accuracy"),
            "created": p.manifest.created,
            "sha256": p.manifest.weights_sha256[:12],
        }
        for p in packages
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, use_container_width=True)
