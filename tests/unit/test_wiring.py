"""Wiring: the schedule names real actors, and no two modules of proxwatch import each other."""

from __future__ import annotations

import ast
from datetime import datetime, timezone
from pathlib import Path

from worker.schedule import Job, jobs
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _actors() -> dict[str, list[str]]:
    """{actor name: its parameters} of worker/actors.py, read without importing it (importing sets
    up the Redis broker)."""
    tree = ast.parse((ROOT / "worker" / "actors.py").read_text())
    return {f.name: [a.arg for a in f.args.args] for f in tree.body if isinstance(f, ast.FunctionDef)
            and any("actor" in ast.unparse(d) for d in f.decorator_list)}


def test_every_scheduled_job_is_an_actor_taking_the_arguments_the_scheduler_sends():
    actors = _actors()
    schedule = jobs(Settings(home=ROOT))
    assert schedule[0].actor in ("poll", "poll_batch"), "polls come first: every server at its own interval"
    for job in schedule:
        if job.batch > 1:
            expected = ["polls"]  # [[server_id, scheduled_at], …]
        else:
            expected = ["server_id", "scheduled_at"] if job.per_server else ["scheduled_at"]
        assert actors.get(job.actor) == expected, job


def test_polls_are_batched_as_set_and_one_per_message_with_a_batch_of_one():
    assert jobs(Settings(home=ROOT, poll_batch=16))[0] == Job("poll_batch", batch=16)
    assert jobs(Settings(home=ROOT, poll_batch=1))[0] == Job("poll")
    assert _actors()["poll"] == ["server_id", "scheduled_at"]  # messages queued before an upgrade


def test_schedule_intervals_follow_the_settings():
    s = Settings(home=ROOT)
    by_name = {j.actor: j for j in jobs(s)}
    assert by_name["sync_guests"].interval_s == s.inventory.interval_s
    assert by_name["expire_sessions"].interval_s == s.sessions.sweep_s


def _module_imports() -> dict[str, set[str]]:
    """{module: proxwatch modules it imports, at the top or inside a function (a cycle hidden in a
    function is still two modules that cannot be understood one without the other)}."""
    graph: dict[str, set[str]] = {}
    for path in [*ROOT.joinpath("worker").rglob("*.py"), *ROOT.joinpath("dashboard").rglob("*.py")]:
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] in ("worker", "dashboard"):
                    deps.add(node.module)
                    deps |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] in ("worker", "dashboard")}
        graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_no_import_cycles():
    graph = _module_imports()
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        for dep in sorted(graph[module]):
            if dep in path:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert cycles == []


def test_the_scheduler_sends_the_servers_due_in_one_step_in_batches_each_tick_once():
    import uuid

    from worker.scheduler import Scheduler, tick

    sent = []
    scheduler = Scheduler("postgresql://unused", lambda actor, args: sent.append((actor, args)), None,
                          [Job("poll_batch", batch=4)])
    scheduler.servers = [(str(uuid.uuid4()), 10) for _ in range(10)]
    now = 1_800_000_000.0
    # Every server is due at its latest tick: 10 polls in messages of at most 4
    assert scheduler.step(now) == 10
    assert [len(args[0]) for _, args in sent] == [4, 4, 2]
    polls = [poll for _, args in sent for poll in args[0]]
    assert sorted(sid for sid, _ in polls) == sorted(sid for sid, _ in scheduler.servers)
    assert all(actor == "poll_batch" for actor, _ in sent)
    assert {sid: at for sid, at in polls} == {
        sid: datetime.fromtimestamp(tick(sid, 10, now), timezone.utc).isoformat() for sid, _ in scheduler.servers}
    # And another pass at the same moment sends nothing again
    assert scheduler.step(now) == 0 and len(sent) == 3
