"""Corpus capture on Ray (issue 26): a local cluster's actor pool writes the same store, byte for byte, as one
process; a worker killed mid-run has its shard retried; a stopped run resumes; and what cannot work is refused."""

import builtins

import pytest

import trilens
from trilens.capture.dataset import capture_dataset
from trilens.capture.ray_engine import FAIL_ONCE
from trilens.cli import main
from trilens.errors import InputError, TrilensError

ray = pytest.importorskip("ray", reason="pip install 'trilens[ray]' to run corpus capture on Ray")

TEXTS = [f"the cat sat on the mat {i % 7} times" if i % 3 else "a dog was here" for i in range(40)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local two-CPU Ray cluster whose workers die once, the first time they are handed shard 3."""
    marker = tmp_path_factory.mktemp("ray") / "killed"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {FAIL_ONCE: f"3:{marker}"}})
    yield marker
    ray.shutdown()


def _same_files(a, b):
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.slow
def test_ray_capture_equals_one_process_byte_for_byte_after_a_worker_is_killed(cluster, tiny_path, tmp_path):
    model = trilens.load(tiny_path("gpt2"))
    capture_dataset(model, TEXTS, ["resid_post", "mlp_out"], tmp_path / "one", texts_per_shard=6, progress=False)
    store = capture_dataset(model, TEXTS, ["resid_post", "mlp_out"], tmp_path / "ray", texts_per_shard=6,
                            engine="ray", num_workers=2, progress=False)
    assert cluster.exists()  # the worker writing shard 3 died once; Ray retried the shard on a new worker
    assert store is not None and store.n_texts == len(TEXTS)
    _same_files(tmp_path / "one", tmp_path / "ray")
    assert not list((tmp_path / "ray").glob(".*.tmp"))  # the dead worker left no half-written file


@pytest.mark.slow
def test_a_stopped_ray_capture_resumes_and_the_cli_runs_it(cluster, tiny_path, tmp_path, capsys):
    t5 = trilens.load(tiny_path("t5"))
    pairs = [(t, "x y z") for t in TEXTS[:20]]
    capture_dataset(t5, pairs, "resid_post", tmp_path / "one", texts_per_shard=5, progress=False)
    # a run that stopped after some shards: part 0 of 2 written by one process, then Ray finishes the rest
    assert capture_dataset(t5, pairs, "resid_post", tmp_path / "ray", texts_per_shard=5, shard="0/2", progress=False) is None
    store = capture_dataset(t5, pairs, "resid_post", tmp_path / "ray", texts_per_shard=5, engine="ray", resume=True,
                            progress=False)
    assert store is not None
    _same_files(tmp_path / "one", tmp_path / "ray")
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(TEXTS[:12]))
    assert main(["capture", str(tiny_path("gpt2")), "--texts", str(texts), "--sites", "resid_post", "--out",
                 str(tmp_path / "cli"), "--texts-per-shard", "4", "--engine", "ray", "--num-workers", "2",
                 "--no-progress"]) == 0
    capture_dataset(trilens.load(tiny_path("gpt2")), TEXTS[:12], "resid_post", tmp_path / "cli-one", texts_per_shard=4,
                    progress=False)
    _same_files(tmp_path / "cli-one", tmp_path / "cli")


def test_ray_capture_refuses_what_it_cannot_do(tiny_path, tmp_path, monkeypatch, capsys):
    from tiny import CONFIGS

    cfg_cls, kwargs, cls = CONFIGS["gpt2"]
    in_memory = trilens.load(cls(cfg_cls(**kwargs)), tokenizer=trilens.load(tiny_path("gpt2")).tokenizer)
    with pytest.raises(InputError, match="loads the model in every worker.*save_pretrained"):
        capture_dataset(in_memory, TEXTS, "resid_post", tmp_path / "x", engine="ray")
    assert not (tmp_path / "x").exists()  # refused before anything was written
    real_import = builtins.__import__

    def no_ray(name, *args, **kw):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    model = trilens.load(tiny_path("gpt2"))
    with pytest.raises(TrilensError, match=r"pip install 'trilens\[ray\]'"):
        capture_dataset(model, TEXTS, "resid_post", tmp_path / "y", engine="ray")
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(TEXTS))
    assert main(["capture", str(tiny_path("gpt2")), "--texts", str(texts), "--sites", "resid_post", "--out",
                 str(tmp_path / "z"), "--engine", "ray"]) == 2
    assert "pip install 'trilens[ray]'" in capsys.readouterr().err and not (tmp_path / "z").exists()
    with pytest.raises(InputError, match="engine must be 'local' or 'ray'"):
        capture_dataset(model, TEXTS, "resid_post", tmp_path / "w", engine="spark")
