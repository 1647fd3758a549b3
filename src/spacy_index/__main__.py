"""``python -m spacy_index``: the same as the ``spacy-index`` command."""

from spacy_index.cli import run

run()
