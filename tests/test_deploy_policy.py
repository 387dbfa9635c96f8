"""Rolling out task code, the pure parts: the selector, signed bundles, and the rollout policy
(waves, rate, timeouts, the abort threshold, pause) with a fake clock (docs/deploy.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from mqtt_tasks import rollouts
from mqtt_tasks.deploy import bundle as bundles
from mqtt_tasks.deploy import keys
from mqtt_tasks.deploy.selector import parse
from mqtt_tasks.errors import ConfigError, SignatureError
from mqtt_tasks.rollouts import Rollout, WorkerStep

# -- the selector ------------------------------------------------------------------------------


def test_the_selector_grammar() -> None:
    assert parse("all").matches("w", [])
    assert parse("worker=a,b").matches("b", []) and not parse("worker=a,b").matches("c", ["gpu"])
    assert parse("label=gpu,camera").matches("w", ["camera", "gpu", "x"])
    assert not parse("label=gpu,camera").matches("w", ["gpu"])
    assert str(parse("label=gpu,camera")) == "label=camera,gpu"


@pytest.mark.parametrize("text", ["", "any", "worker=", "label=", "worker=a b", "label=a/b", "host=x", "all,x"])
def test_a_bad_selector_is_refused_with_the_grammar(text: str) -> None:
    with pytest.raises(ConfigError, match="selector|worker id|labels"):
        parse(text)


# -- signed bundles ------------------------------------------------------------------------------


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Any, Any]:
    keys.keygen(str(tmp_path / "k.key"), str(tmp_path / "k.pub"))
    return keys.load_private(str(tmp_path / "k.key")), keys.load_public(str(tmp_path / "k.pub"))


def _make(private: Any, source: str = "x = 1\n", **kw: Any) -> dict[str, Any]:
    options = {"module": "m", "version": "2", "to": "all", "rollout": "r1", "serial": 5, **kw}
    return bundles.make(source, private_key=private, **options)


def test_keygen_keeps_the_private_key_private_and_never_overwrites(tmp_path: Path, pair: Any) -> None:
    assert os.stat(tmp_path / "k.key").st_mode & 0o777 == 0o600
    with pytest.raises(ConfigError, match="cannot write the private key"):
        keys.keygen(str(tmp_path / "k.key"), str(tmp_path / "other.pub"))
    with pytest.raises(ConfigError, match="not a PEM public key"):
        keys.load_public(str(tmp_path / "k.key"))
    with pytest.raises(ConfigError, match="cannot read"):
        keys.load_private(str(tmp_path / "missing.key"))
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pub").write_bytes(other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ConfigError, match="not an Ed25519 public key"):
        keys.load_public(str(tmp_path / "ec.pub"))


def test_a_signed_bundle_verifies_and_any_change_breaks_it(pair: Any, tmp_path: Path) -> None:
    private, public = pair
    signed = _make(private)
    bundles.verify(bundles.read(json.dumps(signed).encode()), public)
    for change in ({"source": "x = 2\n"}, {"manifest": {**signed["manifest"], "serial": 6}},
                   {"manifest": {**signed["manifest"], "to": "worker=evil"}},
                   {"manifest": {**signed["manifest"], "extra": 1}}):
        with pytest.raises(SignatureError):
            bundles.verify(bundles.read(json.dumps({**signed, **change}).encode()), public)
    keys.keygen(str(tmp_path / "o.key"), str(tmp_path / "o.pub"))
    with pytest.raises(SignatureError, match="does not verify"):
        bundles.verify(bundles.read(json.dumps(signed).encode()), keys.load_public(str(tmp_path / "o.pub")))


@pytest.mark.parametrize("payload", [b"", b"{", b"[]", b'{"manifest": {}, "source": "", "sig": "x"}',
                                     b'{"source": "x", "sig": "' + b"A" * 88 + b'"}'])
def test_a_malformed_bundle_is_refused(payload: bytes) -> None:
    with pytest.raises(SignatureError, match="malformed bundle"):
        bundles.read(payload)


def test_a_bundle_with_a_bad_name_or_version_is_not_made(pair: Any) -> None:
    with pytest.raises(ConfigError, match="module"):
        _make(pair[0], module="no-dashes")
    with pytest.raises(ConfigError, match="version"):
        _make(pair[0], version="a b")
    with pytest.raises(ConfigError, match="at most 200000 travel in one message"):
        _make(pair[0], source="x = 1\n" * 40_000)
    for taken in ("json", "os", "mqtt_tasks"):  # it would replace them in the worker's sys.modules
        with pytest.raises(ConfigError, match="taken"):
            _make(pair[0], module=taken)


# -- the rollout policy ---------------------------------------------------------------------------


def rollout(n: int = 5, **kw: Any) -> Rollout:
    return Rollout(id="r", module="m", version="2", serial=1, to="all", bundle={},
                   workers={f"w{i}": WorkerStep() for i in range(1, n + 1)}, **kw)


def answer(r: Rollout, worker: str, state: str, now: float = 1.0) -> bool:
    return rollouts.on_report(r, worker, state, "why" if state == "failed" else None, now)


def test_waves_go_one_after_another_and_complete() -> None:
    r = rollout(5, wave_size=2)
    assert rollouts.step(r, 0.0) == ["w1", "w2"]
    assert rollouts.step(r, 0.0) == []  # the wave is not done
    answer(r, "w1", "applied")
    answer(r, "w2", "downloaded")
    assert rollouts.step(r, 1.0) == []
    answer(r, "w2", "applied")
    assert rollouts.step(r, 1.0) == ["w3", "w4"]
    answer(r, "w3", "applied")
    answer(r, "w4", "failed")
    assert rollouts.step(r, 2.0) == ["w5"]
    answer(r, "w5", "applied")
    assert rollouts.step(r, 3.0) == [] and r.state == rollouts.COMPLETED
    assert r.counts() == {"workers": 5, "waiting": 0, "pending": 0, "in_flight": 0, "applied": 4, "failed": 1}
    assert r.waves == 3


def test_the_rate_spaces_the_waves() -> None:
    r = rollout(4, wave_size=2, rate=4.0)  # 4 workers a minute: a wave of 2 every 30 s
    assert rollouts.step(r, 100.0) == ["w1", "w2"]
    answer(r, "w1", "applied")
    answer(r, "w2", "applied")
    assert rollouts.step(r, 129.9) == [] and rollouts.next_due(r) == 130.0
    assert rollouts.step(r, 130.0) == ["w3", "w4"]


def test_the_abort_threshold_counts_after_the_minimum_and_stops_the_waves() -> None:
    r = rollout(5, wave_size=1, abort_pct=50.0, min_executed=2)
    assert rollouts.step(r, 0.0) == ["w1"]
    answer(r, "w1", "failed")  # 1 of 1 failed, but fewer than 2 finished: go on
    assert rollouts.step(r, 1.0) == ["w2"]
    answer(r, "w2", "applied")  # 1 of 2 = 50 %: at the threshold (AWS: at or above)
    assert rollouts.step(r, 2.0) == [] and r.state == rollouts.ABORTED
    assert "1 of 2" in (r.reason or "")
    assert r.count(rollouts.PENDING) == 3
    assert answer(r, "w1", "applied") is False  # the first final answer wins


def test_below_the_threshold_the_rollout_goes_on() -> None:
    r = rollout(4, wave_size=2, abort_pct=60.0, min_executed=2)
    rollouts.step(r, 0.0)
    answer(r, "w1", "failed")
    answer(r, "w2", "applied")
    assert rollouts.step(r, 1.0) == ["w3", "w4"] and r.state == rollouts.RUNNING


def test_a_worker_that_does_not_answer_times_out_as_failed() -> None:
    r = rollout(2, wave_size=1, timeout_s=10.0, abort_pct=100.0, min_executed=1)
    rollouts.step(r, 0.0)
    answer(r, "w1", "verified")
    assert rollouts.next_due(r) == 10.0
    assert rollouts.step(r, 10.0) == [] and r.state == rollouts.ABORTED
    assert r.workers["w1"].state == "failed" and "timed out" in (r.workers["w1"].reason or "")
    assert "last: verified" in (r.workers["w1"].reason or "")


def test_paused_starts_no_wave_but_records_answers_and_resumes() -> None:
    r = rollout(3, wave_size=1)
    rollouts.step(r, 0.0)
    r.state = rollouts.PAUSED
    answer(r, "w1", "applied")
    assert rollouts.step(r, 1.0) == [] and r.workers["w1"].state == "applied"
    r.state = rollouts.RUNNING
    assert rollouts.step(r, 2.0) == ["w2"]


def test_answers_only_move_forward_and_only_for_sent_workers() -> None:
    r = rollout(2)
    assert answer(r, "w2", "applied") is False  # never sent to it
    assert answer(r, "nobody", "applied") is False
    rollouts.step(r, 0.0)
    assert answer(r, "w1", "verified") and not answer(r, "w1", "downloaded")


def test_a_rollout_survives_its_record() -> None:
    r = rollout(3, wave_size=2, rate=1.5, abort_pct=10.0)
    rollouts.step(r, 5.0)
    answer(r, "w1", "failed")
    again = Rollout.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again == r


# -- workers heard after the start (continuous rollouts) ------------------------------------------


def test_the_targets_are_the_live_matches_and_named_workers_not_live_wait() -> None:
    live = [("b", ["cam"]), ("a", ["cam", "gpu"]), ("c", [])]
    assert list(rollouts.targets("label=cam", live, snapshot=False)) == ["a", "b"]
    named = rollouts.targets("worker=a,x,c", live, snapshot=False)
    assert {w: s.state for w, s in named.items()} == {"a": "pending", "c": "pending", "x": "waiting"}
    assert list(rollouts.targets("worker=a,x,c", live, snapshot=True)) == ["a", "c"]  # today's fixed list
    assert rollouts.targets("label=none", live, snapshot=False) == {}  # a continuous rollout may wait
    with pytest.raises(ValueError, match="no live worker matches label=none"):
        rollouts.targets("label=none", live, snapshot=True)


def labelled(to: str = "label=cam", n: int = 2, **kw: Any) -> Rollout:
    return Rollout(id="r", module="m", version="2", serial=1, to=to, bundle={},
                   workers=rollouts.targets(to, [(f"w{i}", ["cam"]) for i in range(1, n + 1)], False), **kw)


def finish(r: Rollout, now: float, state: str = "applied") -> None:
    for worker in rollouts.step(r, now):
        answer(r, worker, state, now)


def test_a_worker_heard_after_the_rollout_completed_joins_and_reopens_it() -> None:
    r = labelled(wave_size=2)
    finish(r, 0.0)
    assert rollouts.step(r, 1.0) == [] and r.state == rollouts.COMPLETED
    assert rollouts.join(r, "w9", ["other"], {}, 2.0) is False  # the selector does not match it
    assert rollouts.join(r, "w3", ["cam", "x"], {"m": "1"}, 2.0) is True
    assert r.state == rollouts.RUNNING and r.workers["w3"].state == "pending" and rollouts.next_due(r) == 0.0
    assert rollouts.step(r, 2.0) == ["w3"]
    assert rollouts.join(r, "w3", ["cam"], {}, 3.0) is False  # it is a target now: never added twice
    answer(r, "w3", "applied", 4.0)
    assert rollouts.step(r, 4.0) == [] and r.state == rollouts.COMPLETED
    assert r.counts()["applied"] == 3 and r.waves == 2


def test_a_joiner_goes_in_the_next_wave_after_the_targets_at_the_rate() -> None:
    r = labelled(n=2, wave_size=1, rate=6.0)  # a wave of 1 every 10 s
    assert rollouts.step(r, 0.0) == ["w1"]
    assert rollouts.join(r, "w0", ["cam"], {}, 1.0)
    assert list(r.workers) == ["w1", "w2", "w0"]  # joiners go last, in the order heard
    answer(r, "w1", "applied", 2.0)
    assert rollouts.step(r, 5.0) == [] and rollouts.step(r, 10.0) == ["w2"]
    answer(r, "w2", "applied", 11.0)
    assert rollouts.step(r, 20.0) == ["w0"]


def test_a_joiners_failure_and_timeout_count_toward_the_abort_threshold() -> None:
    r = labelled(n=1, abort_pct=50.0, min_executed=2, timeout_s=10.0, retries=0)
    finish(r, 0.0)
    assert rollouts.step(r, 1.0) == [] and r.state == rollouts.COMPLETED
    rollouts.join(r, "w2", ["cam"], {}, 2.0)
    assert rollouts.step(r, 2.0) == ["w2"] and rollouts.next_due(r) == 12.0
    assert rollouts.step(r, 12.0) == [] and r.state == rollouts.ABORTED  # 1 of 2 timed out: 50 %
    assert "timed out" in (r.workers["w2"].reason or "") and "1 of 2" in (r.reason or "")
    assert rollouts.join(r, "w3", ["cam"], {}, 13.0) is False  # an aborted rollout takes no joiner


def test_a_rollout_with_no_target_yet_waits_and_a_named_worker_joins_when_heard() -> None:
    r = labelled(to="label=cam", n=0)
    assert rollouts.step(r, 0.0) == [] and r.state == rollouts.WAITING and rollouts.next_due(r) is None
    named = Rollout(id="n", module="m", version="2", serial=1, to="worker=a,b", bundle={},
                    workers=rollouts.targets("worker=a,b", [("a", [])], snapshot=False))
    finish(named, 0.0)
    assert rollouts.step(named, 1.0) == [] and named.state == rollouts.COMPLETED  # b is counted apart
    assert named.counts() == {"workers": 2, "waiting": 1, "pending": 0, "in_flight": 0, "applied": 1, "failed": 0}
    assert rollouts.on_report(named, "b", "applied", None, 1.0) is False  # never sent to it
    assert rollouts.join(named, "c", [], {}, 2.0) is False  # not named
    assert rollouts.join(named, "b", [], {}, 2.0) and rollouts.step(named, 2.0) == ["b"]
    gone = Rollout(id="g", module="m", version="2", serial=1, to="worker=x", bundle={},
                   workers=rollouts.targets("worker=x", [], snapshot=False))
    assert rollouts.step(gone, 0.0) == [] and gone.state == rollouts.WAITING


def test_a_worker_that_already_runs_the_version_is_recorded_not_sent() -> None:
    r = labelled(n=0)
    rollouts.step(r, 0.0)
    assert rollouts.join(r, "w5", ["cam"], {"m": "2", "other": "9"}, 1.0)
    assert r.workers["w5"].state == "applied" and "already running 2" in (r.workers["w5"].reason or "")
    assert rollouts.step(r, 1.0) == [] and r.state == rollouts.COMPLETED


def test_snapshot_rolled_back_and_superseded_rollouts_take_no_joiner() -> None:
    snap = labelled(snapshot=True)
    finish(snap, 0.0)
    assert rollouts.join(snap, "w3", ["cam"], {}, 1.0) is False
    undone = labelled()
    undone.rolled_back_by = "rb"
    assert rollouts.join(undone, "w3", ["cam"], {}, 1.0) is False
    old, new, other = labelled(), labelled(), labelled()
    old.id, new.id, new.serial, other.id, other.module = "old", "new", 2, "other", "n"
    assert rollouts.current([new, old, other]) == {"m": new, "n": other}


def test_pause_holds_joiners_of_a_continuous_rollout_and_resume_sends_them() -> None:
    r = labelled(n=1)
    finish(r, 0.0)
    rollouts.step(r, 1.0)
    assert rollouts.move(r, rollouts.PAUSED, 2.0) is None and r.state == rollouts.PAUSED
    rollouts.join(r, "w2", ["cam"], {}, 3.0)
    assert rollouts.step(r, 3.0) == [] and r.workers["w2"].state == "pending"
    assert rollouts.move(r, rollouts.RUNNING, 4.0) is None and rollouts.step(r, 4.0) == ["w2"]
    snap = labelled(n=1, snapshot=True)
    finish(snap, 0.0)
    rollouts.step(snap, 1.0)
    assert "completed: it cannot be paused" in (rollouts.move(snap, rollouts.PAUSED, 2.0) or "")


def test_a_record_from_before_continuous_rollouts_stays_a_snapshot() -> None:
    old = labelled().to_dict()
    del old["snapshot"]
    assert Rollout.from_dict(old).snapshot is True
    assert Rollout.from_dict(labelled().to_dict()).snapshot is False


# -- retries of targets that timed out without an answer; rollbacks for joiners ----------------------


def test_a_target_that_timed_out_without_a_word_is_sent_again_when_heard_and_its_final_outcome_counts() -> None:
    r = rollout(2, wave_size=1, timeout_s=10.0, retries=1, abort_pct=50.0, min_executed=1)
    assert rollouts.step(r, 0.0) == ["w1"] and r.workers["w1"].attempts == 1
    # w1 never answers (it was offline): not failed, waiting to be heard; the next wave goes on
    assert rollouts.step(r, 10.0) == ["w2"] and r.state == rollouts.RUNNING
    w1 = r.workers["w1"]
    assert w1.state == "waiting" and "sent again when heard" in (w1.reason or "") and "send 1 of at most 2" in w1.reason
    answer(r, "w2", "applied", 11.0)
    assert rollouts.step(r, 11.0) == [] and r.state == rollouts.COMPLETED  # the retry is counted apart
    assert r.counts() == {"workers": 2, "waiting": 1, "pending": 0, "in_flight": 0, "applied": 1, "failed": 0}
    assert answer(r, "w1", "downloaded", 12.0) is False  # only a final answer counts while it waits
    assert rollouts.join(r, "w1", [], {}, 13.0) and r.state == rollouts.RUNNING  # heard: due again
    assert rollouts.step(r, 13.0) == ["w1"] and r.workers["w1"].attempts == 2 and r.waves == 3
    assert rollouts.step(r, 23.0) == [] and r.workers["w1"].state == "failed"  # out of retries: final
    assert "after 2 sends" in (r.workers["w1"].reason or "")
    assert r.state == rollouts.ABORTED and "1 of 2" in (r.reason or "")  # the final outcome counts
    assert rollouts.join(r, "w1", [], {}, 24.0) is False


def test_a_timed_out_target_that_answered_or_runs_the_version_or_answers_late_is_not_sent_again() -> None:
    r = rollout(3, wave_size=3, timeout_s=10.0)
    rollouts.step(r, 0.0)
    answer(r, "w1", "downloaded")  # it was there: a timeout after a word is a failure, as before
    rollouts.step(r, 10.0)
    assert [r.workers[w].state for w in ("w1", "w2", "w3")] == ["failed", "waiting", "waiting"]
    assert answer(r, "w2", "applied", 11.0) and r.workers["w2"].state == "applied"  # the first send arrived late
    assert rollouts.join(r, "w3", [], {"m": "2"}, 12.0)  # it runs the version already: recorded, not sent
    assert r.workers["w3"].state == "applied" and r.workers["w3"].attempts == 1
    assert rollouts.step(r, 12.0) == [] and r.state == rollouts.COMPLETED and r.waves == 1
    none = rollout(1, timeout_s=10.0, retries=0)
    rollouts.step(none, 0.0)
    rollouts.step(none, 10.0)
    assert none.workers["w1"].state == "failed" and "after" not in (none.workers["w1"].reason or "")


def test_a_snapshot_rollout_retries_its_own_targets_but_takes_no_joiner_and_it_all_survives_the_record() -> None:
    r = labelled(n=1, snapshot=True, timeout_s=5.0)
    rollouts.step(r, 0.0)
    assert rollouts.step(r, 5.0) == [] and r.state == rollouts.COMPLETED
    again = Rollout.from_dict(json.loads(json.dumps(r.to_dict())))  # a coordinator killed: the store's copy
    assert again == r and again.workers["w1"].attempts == 1 and again.retries == 3
    assert rollouts.join(again, "w2", ["cam"], {}, 6.0) is False
    assert rollouts.join(again, "w1", ["cam"], {}, 6.0) and rollouts.step(again, 6.0) == ["w1"]
    answer(again, "w1", "applied", 7.0)
    assert rollouts.step(again, 7.0) == [] and again.state == rollouts.COMPLETED
    old = r.to_dict()
    del old["retries"]
    assert Rollout.from_dict(old).retries == 0  # a record from before retries: its timeouts stay final


def test_a_rollback_skips_the_workers_on_its_version_and_takes_joiners_of_the_selector() -> None:
    back = labelled(n=3, wave_size=3)
    back.version, back.serial, back.rollback_of = "1", 3, "bad"
    running = {"w1": {"m": "1"}, "w2": {"m": "2"}, "w3": {}}
    assert rollouts.skip_running(back, running, 0.0) == ["w1"]
    assert back.workers["w1"].state == "applied" and "already running 1" in (back.workers["w1"].reason or "")
    assert rollouts.step(back, 0.0) == ["w2", "w3"]
    bad = labelled()
    bad.id, bad.serial, bad.rolled_back_by = "bad", 2, back.id
    assert rollouts.current([bad, back]) == {"m": back}
    assert rollouts.join(bad, "w4", ["cam"], {}, 1.0) is False
    assert rollouts.join(back, "w4", ["cam"], {"m": "2"}, 1.0) and back.workers["w4"].state == "pending"
    assert rollouts.join(back, "w5", ["cam"], {"m": "1"}, 1.0) and back.workers["w5"].state == "applied"
