"""Auto-learning in the parent: zapret's counting (threshold within fail time, a
success resets), the auto list file (atomic, header, no duplicates), and the
verdict pipe from workers to the parent."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from govpass.autolearn import (
    HEADER,
    AutoLearner,
    EventReader,
    append_host,
    encode_events,
    learner_for,
    send_events,
)
from govpass.config import load
from govpass.errors import GovpassError
from govpass.runtime.nfqueue_service import NfqueueService


def learner(tmp_path: Path, threshold: int = 3, fail_time: float = 60.0) -> AutoLearner:
    logs: list[str] = []
    learn = AutoLearner({"auto": tmp_path / "auto.txt"}, threshold, fail_time, logs.append)
    learn.logs = logs  # type: ignore[attr-defined]
    return learn


def names(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]


def test_threshold_failures_learn_the_name(tmp_path: Path) -> None:
    learn = learner(tmp_path)
    assert not learn.observe("auto", "Blocked.Example.", True, now=0)
    assert not learn.observe("auto", "blocked.example", True, now=10)
    assert not (tmp_path / "auto.txt").exists()
    assert learn.observe("auto", "blocked.example", True, now=20)
    path = tmp_path / "auto.txt"
    assert path.read_text() == HEADER + "blocked.example\n"
    assert learn.logs == [  # type: ignore[attr-defined]
        f"auto: learned blocked.example (profile auto): 3 failures within 60 s; added to {path}"
    ]
    assert learn.stats() == {
        "auto_learned": 1,
        "auto_counting": 0,
        "auto_write_errors": 0,
        "auto_rejected": 0,
    }


def test_failures_further_apart_than_fail_time_start_over(tmp_path: Path) -> None:
    learn = learner(tmp_path, threshold=3, fail_time=60)
    learn.observe("auto", "a.example", True, now=0)
    learn.observe("auto", "a.example", True, now=60)  # exactly fail_time: still counts
    assert not learn.observe("auto", "a.example", True, now=121)  # 61 s later: count is 1
    assert learn.counts[("auto", "a.example")].failures == 1
    learn.observe("auto", "a.example", True, now=150)
    assert learn.observe("auto", "a.example", True, now=200)


def test_a_success_resets_the_count(tmp_path: Path) -> None:
    learn = learner(tmp_path, threshold=2)
    learn.observe("auto", "flaky.example", True, now=0)
    learn.observe("auto", "flaky.example", False, now=1)
    assert not learn.observe("auto", "flaky.example", True, now=2)
    assert learn.observe("auto", "flaky.example", True, now=3)
    assert (learn.failures, learn.successes) == (3, 1)


def test_names_are_counted_per_profile_and_host(tmp_path: Path) -> None:
    files = {"a": tmp_path / "a.txt", "b": tmp_path / "b.txt"}
    learn = AutoLearner(files, threshold=2)
    learn.observe("a", "x.example", True, now=0)
    learn.observe("b", "x.example", True, now=0)
    learn.observe("a", "y.example", True, now=0)
    assert learn.observe("a", "x.example", True, now=1)
    assert names(files["a"]) == ["x.example"] and not files["b"].exists()
    assert not learn.observe("unknown-profile", "x.example", True, now=1)


def test_file_keeps_what_is_there_and_has_no_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "auto.txt"
    path.write_text("# mine\nkept.example  # a note\nno-newline.example")
    path.chmod(0o640)
    inode = os.stat(path).st_ino
    assert append_host(path, "new.example")
    assert path.read_text() == "# mine\nkept.example  # a note\nno-newline.example\nnew.example\n"
    assert os.stat(path).st_ino != inode, "replaced by rename, never rewritten in place"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert not append_host(path, "kept.example")
    assert not append_host(path, "new.example")
    assert [p.name for p in tmp_path.iterdir()] == ["auto.txt"], "no temporary file left"


def test_learning_a_name_already_in_the_file_logs_nothing(tmp_path: Path) -> None:
    (tmp_path / "auto.txt").write_text("blocked.example\n")
    learn = learner(tmp_path, threshold=1)
    assert not learn.observe("auto", "blocked.example", True, now=0)
    assert learn.logs == [] and learn.learned == 0  # type: ignore[attr-defined]


def test_invalid_names_and_write_errors_are_one_line(tmp_path: Path) -> None:
    learn = learner(tmp_path, threshold=1)
    assert not learn.observe("auto", "bad name", True, now=0)
    assert learn.logs == [  # type: ignore[attr-defined]
        'auto: not learning "bad name" (profile auto): not a valid host name '
        "(later ones are only counted: auto_rejected in stats)"
    ]
    nowhere = AutoLearner({"auto": tmp_path / "missing-dir" / "auto.txt"}, 1, 60, learn.log)
    assert not nowhere.observe("auto", "a.example", True, now=0)
    assert learn.logs[-1].startswith(  # type: ignore[attr-defined]
        f"auto: cannot add a.example to {tmp_path / 'missing-dir' / 'auto.txt'}: "
    )
    assert nowhere.write_errors == 1


def test_tracked_names_are_bounded(tmp_path: Path) -> None:
    learn = AutoLearner({"auto": tmp_path / "auto.txt"}, 3, 60, max_tracked=100)
    for i in range(500):
        learn.observe("auto", f"n{i}.example", True, now=float(i))
    assert len(learn.counts) <= 100
    assert ("auto", "n499.example") in learn.counts, "the most recent names are kept"


# ------------------------------------------------------------------ worker -> parent


def test_events_cross_a_pipe_in_pieces() -> None:
    events = [("listed", "a.example", True), ("listed", "b.example", False)]
    data = b"".join(encode_events(events))
    reader = EventReader()
    got = []
    for i in range(0, len(data), 7):  # reads may end anywhere
        got += reader.feed(data[i : i + 7])
    assert got == events
    assert reader.feed(b"garbage\n[1, 2]\n") == []


def test_a_full_pipe_drops_instead_of_blocking() -> None:
    import fcntl

    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETFL, os.O_NONBLOCK)
        events = [("listed", "x" * 200 + ".example", True)] * 2000
        dropped = send_events(w, events)
        assert 0 < dropped < 2000
        assert len(encode_events([("p", "h" * 2000, True)])) == 0, "too long for one write"
    finally:
        os.close(r)
        os.close(w)


def test_daemon_parent_learns_from_worker_verdicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOVPASS_RUN_DIR", str(tmp_path / "run"))
    auto = tmp_path / "auto.txt"
    config = load(
        env={}, flags={"hostlist-auto": str(auto), "auto-fail-threshold": "2", "workers": "1"}
    )
    assert learner_for(load(env={})) is None
    logs: list[str] = []
    daemon = NfqueueService(config, logs.append)
    daemon.directory.mkdir(parents=True)
    daemon.owns_run_dir = True  # as start() once the directory is checked and locked
    daemon._start_targeting()
    assert daemon._events is not None and daemon.learner is not None
    write_end = daemon._events[1]
    send_events(write_end, [("listed", "blocked.example", True), ("listed", "ok.example", False)])
    daemon.wait(0.2)
    assert not auto.exists()
    send_events(write_end, [("listed", "blocked.example", True)])
    daemon.wait(0.2)
    assert names(auto) == ["blocked.example"]
    assert any(line.startswith("auto: learned blocked.example") for line in logs)
    stats = daemon.stats()
    assert stats["auto_learned"] == 1
    daemon.stop()
    assert daemon._events is None


# ------------------------------------------------------------------ hostile names and files

# The reproduction of issue 13: a comment sign, a terminal title escape, line breaks
# and a name of the attacker's choice, all in one SNI.
HOSTILE = "victim.example#\x1b]0;pwned\x07\nbad entry\n^bank.example"


def test_a_hostile_sni_is_never_learned_and_logged_escaped(tmp_path: Path) -> None:
    learn = learner(tmp_path, threshold=1)
    for _ in range(3):
        assert not learn.observe("auto", HOSTILE, True, now=0)
    assert not (tmp_path / "auto.txt").exists()
    logs = learn.logs  # type: ignore[attr-defined]
    assert len(logs) == 1, "a flood of bad names is one line, then a counter"
    assert not any(c in logs[0] for c in "\x1b\x07\n\r")
    assert "victim.example#\\x1b]0;pwned\\x07\\x0abad entry\\x0a^bank.example" in logs[0]
    assert learn.stats()["auto_rejected"] == 3
    assert learn.counts == {}, "invalid names are not even counted"


def test_only_valid_host_names_reach_the_file(tmp_path: Path) -> None:
    learn = learner(tmp_path, threshold=1)
    for bad in ("a..example", "-a.example", "a-.example", "a_b.example", "é.example", "x" * 64):
        assert not learn.observe("auto", bad, True, now=0)
    assert learn.observe("auto", "Xn--Bcher-Kva.Example.", True, now=0)
    assert names(tmp_path / "auto.txt") == ["xn--bcher-kva.example"]


def test_a_symlink_at_the_old_temporary_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("secret\n")
    victim.chmod(0o600)
    path = tmp_path / "auto.txt"
    # The name the old writer used: an attacker could plant it in advance.
    (tmp_path / f".auto.txt.{os.getpid()}.tmp").symlink_to(victim)
    assert append_host(path, "a.example")
    assert victim.read_text() == "secret\n"
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o600
    assert names(path) == ["a.example"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640, "a new list is not world-readable"


def test_a_symlink_as_the_auto_list_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("secret\n")
    (tmp_path / "auto.txt").symlink_to(victim)
    learn = learner(tmp_path, threshold=1)
    assert not learn.observe("auto", "a.example", True, now=0)
    assert victim.read_text() == "secret\n"
    assert learn.write_errors == 1
    assert "a symlink" in learn.logs[-1]  # type: ignore[attr-defined]


def test_an_auto_list_in_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    config = load(env={}, flags={"hostlist-auto": str(shared / "auto.txt")})
    with pytest.raises(GovpassError, match=r"hostlist-auto directory .*shared: writable by others"):
        learner_for(config)
    learn = AutoLearner({"auto": shared / "auto.txt"}, 1, 60)
    assert not learn.observe("auto", "a.example", True, now=0)
    assert not (shared / "auto.txt").exists() and learn.write_errors == 1


def test_many_bad_auto_list_lines_are_counted_and_the_first_five_named() -> None:
    from govpass.autolearn import parse_auto_list

    data = b"".join(b"bad %d\n" % i if i % 2 else b"n%d.example\n" % i for i in range(1, 17))
    names, note = parse_auto_list(data, "hostlist-auto auto.txt")
    assert len(names) == 8 and "www.n16.example" in names
    assert note == (
        "hostlist-auto auto.txt: skipped 8 line(s) that do not parse "
        "(line 1, 3, 5, 7, 9 and 3 more)"
    )
    assert parse_auto_list(b"a.example\n", "x")[1] is None


def test_lines_of_the_auto_list_that_do_not_parse_are_skipped(tmp_path: Path) -> None:
    from govpass.targeting import Targeting

    auto = tmp_path / "auto.txt"
    # What an older govpass wrote for the hostile SNI: its next start refused the list.
    auto.write_text(HEADER + "victim.example#\x1b]0;pwned\x07\nbad entry\n^bank.example\n")
    config = load(env={}, flags={"hostlist-auto": str(auto)})
    targeting = Targeting.from_config(config)
    targeting.build()
    assert "skipped 1 line(s) that do not parse (line 4)" in targeting.summary
    targeting.build(force=True)
    assert "skipped 1 line(s)" in targeting.summary, "said again for a re-read"
    targeting.build()
    assert "skipped" not in targeting.summary, "said once per version of the file"
    assert learner_for(config) is not None
    assert append_host(auto, "new.example"), "the learner still adds to it"
    with pytest.raises(GovpassError, match=r"hostlist .* line 2"):
        bad = tmp_path / "list.txt"
        bad.write_text("ok.example\nbad entry\n")
        Targeting.from_config(load(env={}, flags={"hostlist": str(bad)})).build()
