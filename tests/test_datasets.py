"""example_data: the local shared copy first, else fastai's data directory, downloaded once; no network here."""
import json
import urllib.error
from pathlib import Path

import pytest
from fastai.data.external import fastai_cfg

import blurlite.datasets as datasets
from blurlite.datasets import EXAMPLE_DATA, example_data
from blurlite.tasks.token_classification import read_conll

REAL_DOWNLOAD = datasets._download


def _offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -2] Name or service not known")


@pytest.fixture
def home(tmp_path, monkeypatch):
    "A checkout at tmp/main with no shared data anywhere above it, fastai's home in tmp/fastai, no network."
    checkout = tmp_path / "main"
    (checkout / "nbs").mkdir(parents=True)
    monkeypatch.setattr(datasets, "_PACKAGE_ROOT", checkout)
    monkeypatch.chdir(checkout / "nbs")
    monkeypatch.setenv("FASTAI_HOME", str(tmp_path / "fastai"))
    fastai_cfg.cache_clear()  # fastai reads FASTAI_HOME once
    monkeypatch.setattr(datasets, "_download", _offline)
    monkeypatch.setattr(datasets, "untar_data", _offline)
    yield tmp_path
    fastai_cfg.cache_clear()


def _put(path: Path, text: str = "label,text,is_valid\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", list(EXAMPLE_DATA))
def test_shared_data_beside_the_checkout_is_used_from_a_subfolder(home, name):
    shared = _put(home / "shared" / "data" / name)
    assert example_data(name) == shared


def test_shared_data_beside_the_package_is_used_from_any_folder(home, monkeypatch, tmp_path_factory):
    shared = _put(home / "shared" / "data" / "imdb_sample.csv")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # no shared/data above it
    assert example_data("imdb_sample.csv") == shared


def test_the_nearest_shared_copy_wins(home):
    _put(home / "shared" / "data" / "tinyshakespeare.txt", "far")
    near = _put(home / "main" / "nbs" / "shared" / "data" / "tinyshakespeare.txt", "near")
    assert example_data("tinyshakespeare.txt") == near


@pytest.mark.parametrize("name", list(EXAMPLE_DATA))
def test_without_network_the_error_names_the_url_and_where_to_put_the_file(home, name):
    url, member = EXAMPLE_DATA[name]
    with pytest.raises(RuntimeError) as info:
        example_data(name)
    message = str(info.value)
    data_dir = home / "fastai" / "data"
    assert url in message and "Name or service not known" in message and f"shared/data/{name}" in message
    if member:  # the IMDB sample: extract fastai's archive where untar_data would
        assert f"extract it into {data_dir} (it holds imdb_sample/texts.csv)" in message
        by_hand = data_dir / "imdb_sample" / "texts.csv"
    else:
        by_hand = data_dir / name
        assert f"save it as {by_hand}" in message
    _put(by_hand)  # doing what the message says makes the next call work, still without network
    assert example_data(name) == by_hand


def test_a_download_is_saved_in_fastais_data_directory_and_reused(home, monkeypatch):
    calls = []

    def fake_download(url, dest):
        calls.append(url)
        _put(dest, "First Citizen:\n")

    monkeypatch.setattr(datasets, "_download", fake_download)
    first = example_data("tinyshakespeare.txt")
    second = example_data("tinyshakespeare.txt")
    assert first == second == home / "fastai" / "data" / "tinyshakespeare.txt"
    assert calls == [EXAMPLE_DATA["tinyshakespeare.txt"][0]]
    assert first.read_text() == "First Citizen:\n"


def test_the_imdb_sample_comes_from_fastais_untar_data_and_is_reused(home, monkeypatch):
    calls = []

    def fake_untar_data(url):
        calls.append(url)
        return _put(home / "fastai" / "data" / "imdb_sample" / "texts.csv").parent

    monkeypatch.setattr(datasets, "untar_data", fake_untar_data)
    expected = home / "fastai" / "data" / "imdb_sample" / "texts.csv"
    assert example_data("imdb_sample.csv") == example_data("imdb_sample.csv") == expected
    assert calls == ["https://s3.amazonaws.com/fast-ai-sample/imdb_sample.tgz"]


def test_a_download_cut_off_midway_leaves_no_file(home, monkeypatch):
    class CutOff:  # a response that breaks after its first chunk
        chunks = [b"@paulwalk\tO\n"]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, size=-1):
            if self.chunks:
                return self.chunks.pop()
            raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(datasets, "_download", REAL_DOWNLOAD)  # the real one, on a connection that breaks
    monkeypatch.setattr(datasets.urllib.request, "urlopen", lambda url, timeout: CutOff())
    with pytest.raises(RuntimeError, match="connection reset by peer"):
        example_data("wnut17_train.conll")
    assert list((home / "fastai" / "data").iterdir()) == []


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="imdb_sample.csv, wnut17_train.conll, tinyshakespeare.txt"):
        example_data("imdb.csv")


def test_wnut_reads_alike_with_blank_or_tab_only_separator_lines(tmp_path):
    # the original file separates tweets by empty lines, the shared copy by lines holding only a tab
    lines = ["@paul\tO", "Empire\tB-location", "State\tI-location", "{sep}", "ESB\tB-location", "rocks\tO", ""]
    blank = _put(tmp_path / "blank.conll", "\n".join(lines).format(sep=""))
    tab = _put(tmp_path / "tab.conll", "\n".join(lines).format(sep="\t"))
    expected = [(["@paul", "Empire", "State"], ["O", "B-location", "I-location"]), (["ESB", "rocks"], ["B-location", "O"])]
    for path in (blank, tab):
        df = read_conll(path)
        assert list(zip(df.words, df.tags)) == expected


def test_a_squad_download_keeps_its_article_only(home, monkeypatch):
    articles = [{"title": t, "paragraphs": []} for t in ("Beyonce", "University_of_Notre_Dame", "Paris")]

    def fake_download(url, dest):
        assert url.endswith("train-v1.1.json")
        _put(dest, json.dumps({"version": "1.1", "data": articles}))

    monkeypatch.setattr(datasets, "_download", fake_download)
    path = example_data("squad_v1_notre_dame.json")
    assert path == home / "fastai" / "data" / "squad_v1_notre_dame.json"
    assert [a["title"] for a in json.loads(path.read_text())["data"]] == ["University_of_Notre_Dame"]
