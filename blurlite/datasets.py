"""Example data for the notebooks: a local copy when there is one, else the source a fastai user knows."""
import json
import os
import shutil
import urllib.request
from pathlib import Path

from fastai.data.external import URLs, fastai_path, untar_data

__all__ = ["example_data"]

# name -> (url, member): a member is the file inside a fastai archive (fetched with `untar_data`);
# without one the url is the file itself, downloaded once into fastai's data directory
EXAMPLE_DATA = {
    "imdb_sample.csv": (URLs.IMDB_SAMPLE, "texts.csv"),  # columns label, text, is_valid (800 train / 200 valid)
    "wnut17_train.conll": ("https://raw.githubusercontent.com/leondz/emerging_entities_17/master/wnut17train.conll", None),
    "tinyshakespeare.txt": ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt", None),
    # one article each of SQuAD v1.1 (the train and the dev file): kept from the download
    "squad_v1_notre_dame.json": ("https://rajpurkar.github.io/SQuAD-explorer/dataset/train-v1.1.json", None),
    "squad_v1_super_bowl_50.json": ("https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v1.1.json", None),
}
SQUAD_ARTICLES = {"squad_v1_notre_dame.json": "University_of_Notre_Dame", "squad_v1_super_bowl_50.json": "Super_Bowl_50"}

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the checkout, for an editable install


def _shared_copy(name: str) -> Path | None:
    "The first `shared/data/<name>` in the current directory, the package's root or a folder above either."
    for start in (Path.cwd().resolve(), _PACKAGE_ROOT):
        for folder in (start, *start.parents):
            path = folder / "shared" / "data" / name
            if path.is_file():
                return path
    return None


def _download(url: str, dest: Path) -> None:
    "Save `url` at `dest`, through a temporary file so that a failed download leaves nothing behind."
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as file:
            shutil.copyfileobj(response, file)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def _no_network_error(name: str, url: str, member: str | None, dest: Path, err: OSError) -> RuntimeError:
    "The error for a download that failed: the URL, and where to put the file by hand."
    by_hand = (f"download {url} and extract it into {dest.parent.parent} (it holds {dest.parent.name}/{member})"
               if member else f"download {url} and save it as {dest}")
    return RuntimeError(f"could not download the example data {name!r} from {url} ({err}). Without network, "
                        f"{by_hand}, or put the file at shared/data/{name} in the current folder or a folder above it.")


def _keep_article(path: Path, title: str) -> None:
    "Rewrite the SQuAD file at `path` with its article `title` only."
    data = json.loads(path.read_text(encoding="utf-8"))
    data["data"] = [a for a in data["data"] if a.get("title") == title]
    path.write_text(json.dumps(data), encoding="utf-8")


def example_data(name: str) -> Path:
    """Path to the example file `name` (one of `EXAMPLE_DATA`), fetched once if no local copy exists.

    Looks for `shared/data/<name>` from the current directory up (so `../shared/data` beside a checkout is used),
    then in fastai's data directory (`fastai_path("data")`, `~/.fastai/data` by default); otherwise downloads it
    there: the IMDB sample with fastai's `untar_data(URLs.IMDB_SAMPLE)` (its `texts.csv`), the others from their
    original repositories (a SQuAD file is cut to its article). Without network it raises a `RuntimeError` naming the URL and where to put the file.

    Example: `df = pd.read_csv(example_data("imdb_sample.csv"))`
    """
    if name not in EXAMPLE_DATA:
        raise ValueError(f"unknown example data {name!r}; choose one of {', '.join(EXAMPLE_DATA)}")
    shared = _shared_copy(name)
    if shared is not None:
        return shared
    url, member = EXAMPLE_DATA[name]
    archive_name = url.rsplit("/", 1)[-1].removesuffix(".tgz")
    dest = fastai_path("data") / archive_name / member if member else fastai_path("data") / name
    if dest.is_file():
        return dest
    try:
        if member:
            return untar_data(url) / member
        _download(url, dest)
        if name in SQUAD_ARTICLES:
            _keep_article(dest, SQUAD_ARTICLES[name])
    except OSError as err:  # urllib's URLError (no network, HTTP errors) and socket timeouts are OSErrors
        raise _no_network_error(name, url, member, dest, err) from err
    return dest
