"""Packaging: every piece of metadata comes from settings.ini."""
from configparser import ConfigParser

from setuptools import find_packages, setup

cfg = ConfigParser()
cfg.read("settings.ini")
cfg = cfg["DEFAULT"]

setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    keywords=cfg["keywords"].split(),
    author=cfg["author"],
    license=cfg["license"],
    python_requires=f">={cfg['min_python']}",
    packages=find_packages(include=["blurlite", "blurlite.*"]),
    package_data={"blurlite": ["demo_data/*.csv"]},
    entry_points={"console_scripts": cfg["console_scripts"].split()},
    install_requires=cfg["requirements"].split(),
    extras_require={"dev": cfg["dev_requirements"].split(), "demo": cfg["demo_requirements"].split(),
                    "peft": cfg["peft_requirements"].split(), "seq2seq": cfg["seq2seq_requirements"].split()},
)
