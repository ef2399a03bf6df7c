"""`blurlite train` on several processes: `--num-processes 2`, and two machines simulated on loopback (torchrun).

Two launches in all (each costs tens of seconds on 2 CPU cores): one with `--num-processes 2`, one of two
concurrent `torchrun --nnodes 2` invocations; the tests below read what they printed and saved.
"""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import blurlite.cli as cli
from blurlite.all import load_pretrained_learner

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")
REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # a hang fails the test instead of blocking the run
REPORT_LINES = ("training ", "validation: ", "saved to ", "done in ")


def _env() -> dict:
    "The children's environment: one thread each, offline, this checkout's blurlite, no launcher leftovers."
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p))
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(data: Path, model: Path, out: Path) -> list[str]:
    # 64 training rows, 16 validation rows: both divide by 2 processes
    return ["train", "--data", str(data), "--model", str(model), "--valid-col", "is_valid", "--epochs", "1",
            "--bs", "8", "--lr", "1e-3", "--max-length", "32", "--seed", "0", "--out", str(out)]


def _report_lines(stdout: str) -> list[str]:
    "The lines of the CLI's report (progress bars and the training table left out)."
    return [line for line in stdout.splitlines() if line.startswith(REPORT_LINES)]


@pytest.fixture(scope="module")
def two_processes(reviews_csv, tiny_bert_dir, tmp_path_factory):
    "`blurlite train --num-processes 2`: the finished process and the output directory."
    tmp = tmp_path_factory.mktemp("num-processes")
    command = [sys.executable, "-m", "blurlite", *_train_args(reviews_csv, tiny_bert_dir, tmp / "model"),
               "--num-processes", "2"]
    done = subprocess.run(command, env=_env(), cwd=tmp, capture_output=True, text=True, timeout=TIMEOUT)
    return done, tmp / "model"


@pytest.fixture(scope="module")
def two_nodes(reviews_csv, tiny_bert_dir, tmp_path_factory):
    "Two `torchrun --nnodes 2` invocations on loopback, one process each, the same arguments: (node 0, node 1)."
    tmp = tmp_path_factory.mktemp("two-nodes")
    port = _free_port()
    nodes = []
    for node_rank in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node_rank}",
                   "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}",
                   "-m", "blurlite", *_train_args(reviews_csv, tiny_bert_dir, tmp / "model")]
        nodes.append(subprocess.Popen(command, env=_env(), cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    results = []
    try:
        for node in nodes:
            stdout, stderr = node.communicate(timeout=TIMEOUT)
            results.append(subprocess.CompletedProcess(node.args, node.returncode, stdout, stderr))
    finally:
        for node in nodes:  # a hang or a failure: leave nothing running
            if node.poll() is None:
                node.kill()
                node.communicate()
    return results, tmp / "model"


def test_num_processes_trains_on_two_and_saves_an_artifact_that_predicts(two_processes):
    done, model_dir = two_processes
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert "Traceback" not in done.stderr
    learn = load_pretrained_learner(model_dir)
    predictions = learn.hf_predict(["a good film", "a boring plot"])
    assert [set(p) for p in predictions] == [{"label", "score"}] * 2
    assert {p["label"] for p in predictions} <= {"positive", "negative"}


def test_only_rank_zero_prints_the_report(two_processes):
    done, model_dir = two_processes
    lines = _report_lines(done.stdout)
    assert [line.split(" ")[0] for line in lines] == ["training", "validation:", "saved", "done"], done.stdout
    assert "on 2 processes" in lines[0] and "accuracy" in lines[1] and str(model_dir) in lines[2]


def test_two_nodes_on_loopback_train_as_one_job(two_nodes):
    (node0, node1), model_dir = two_nodes
    for node in (node0, node1):
        assert node.returncode == 0, node.stdout[-3000:] + node.stderr[-6000:]
    assert [line.split(" ")[0] for line in _report_lines(node0.stdout)] == ["training", "validation:", "saved",
                                                                            "done"], node0.stdout
    assert "on 2 processes" in node0.stdout
    assert node1.stdout.strip() == ""  # rank 1: no report, no progress bar, no training table
    assert sorted(p.name for p in model_dir.parent.iterdir()) == ["model"]
    assert len(load_pretrained_learner(model_dir).hf_predict(["a good film"])) == 1


def test_two_nodes_and_two_processes_end_with_the_same_weights(two_processes, two_nodes):
    "The same job (2 ranks, same seed and data) however it is launched: the ranks of both trained together."
    (done, model_dir), (nodes, nodes_dir) = two_processes, two_nodes
    assert done.returncode == 0 and [n.returncode for n in nodes] == [0, 0]
    a, b = load_pretrained_learner(model_dir).model.state_dict(), load_pretrained_learner(nodes_dir).model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


# no launch: errors found before any process is started, and how a launched process reports them

def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_demo_is_not_launched_on_several_processes(capsys):
    code, out, err = _run(capsys, "train", "--num-processes", 2)
    assert code == 1 and err.strip() == "blurlite: error: the demo trains in one process: give --data FILE to train " \
                                         "on several"


def test_a_missing_data_file_is_reported_before_launching(tiny_bert_dir, capsys):
    code, out, err = _run(capsys, "train", "--data", "nowhere.csv", "--model", tiny_bert_dir, "--num-processes", 2)
    assert code == 1 and err.strip() == "blurlite: error: no data file at 'nowhere.csv'"


def test_num_processes_must_match_torchrun(reviews_csv, tiny_bert_dir, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, out, err = _run(capsys, "train", "--data", reviews_csv, "--model", tiny_bert_dir, "--num-processes", 3)
    assert code == 1 and "drop --num-processes under torchrun" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("rank, local_rank, expected", [
    ("0", "0", "blurlite: error: no data file at 'nowhere.csv'"),
    ("1", "1", ""),  # the same error as rank 0's: rank 0 reports it
    ("1", "0", "blurlite: error on rank 1: no data file at 'nowhere.csv'"),  # another machine's first process
])
def test_a_launched_process_reports_an_error_once_per_machine(rank, local_rank, expected, tiny_bert_dir,
                                                              monkeypatch, capsys):
    for name, value in (("WORLD_SIZE", "2"), ("RANK", rank), ("LOCAL_RANK", local_rank)):
        monkeypatch.setenv(name, value)
    code, out, err = _run(capsys, "train", "--data", "nowhere.csv", "--model", tiny_bert_dir)
    assert code == 1 and out == "" and err.strip() == expected
