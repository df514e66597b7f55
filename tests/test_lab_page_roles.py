"""The Lab page's "Set role" in lab mode without LSM_ADMINS (issue 26 item 5), in Streamlit's AppTest: the
person running the lab promotes a colleague and demotes them again, and each time the page says what changed,
after the rerun that redraws the People table."""

from __future__ import annotations

from tests.helpers import run_page, texts


def _set_role(at, person: str, role: str):
    next(s for s in at.selectbox if s.label == "Person").set_value(person)
    next(s for s in at.selectbox if s.label == "Role").set_value(role)
    next(b for b in at.button if b.label == "Set role").click()
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_whoever_runs_the_lab_promotes_and_demotes_a_colleague_and_reads_what_changed(with_batch, monkeypatch):
    monkeypatch.setenv("LSM_USER", "root")  # ana submitted the batch: she is on the People table
    at = run_page("pages/lab.py")
    _set_role(at, "ana", "admin")
    assert "ana is now an administrator (was a member)." in texts(at)
    people = at.dataframe[0].value
    assert dict(zip(people["name"], people["role set here"]))["ana"] == "admin"
    assert dict(zip(people["name"], people["role"]))["ana"] == "admin"  # lab mode: everyone administers

    _set_role(at, "ana", "member")
    shown = texts(at)
    assert "last administrator" not in shown
    assert "ana is now a member (was an administrator)." in shown and "takes effect once LSM_ADMINS" in shown
    people = at.dataframe[0].value
    assert dict(zip(people["name"], people["role set here"]))["ana"] == "member"

    _set_role(at, "ana", "member")
    assert "ana is a member already: nothing changed." in texts(at)
    at.run()  # shown once: the next run of the page no longer says it
    assert "nothing changed" not in texts(at)
