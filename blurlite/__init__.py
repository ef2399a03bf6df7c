"""blurlite: fine-tune and ship Hugging Face transformers models the fastai way."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("blurlite")  # settings.ini, through the installed metadata
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
