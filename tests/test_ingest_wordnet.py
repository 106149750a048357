"""WordNet definitions ingestion on a generated data file in WordNet's format."""

import numpy as np
import pytest

from dnmf_dask.errors import DNMFValueError
from dnmf_dask.ingest.wordnet import LEXNAMES, wordnet_corpus, wordnet_definitions

DATA_NOUN = """  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived or known or inferred to have its own distinct existence (living or nonliving)  
00015388 05 n 01 animal 0 000 | a living organism characterized by voluntary movement; "animals breathe air"  
00017222 20 n 01 plant 0 000 | (botany) a living organism lacking the power of locomotion  
00015389 05 n 01 dog 0 000 | a domesticated carnivorous mammal that barks and guards houses  
"""
DATA_VERB = """00001740 29 v 01 breathe 0 000 | draw air into, and expel out of, the lungs; "I can breathe better now"  
"""


@pytest.fixture
def wn_dir(tmp_path):
    (tmp_path / "data.noun").write_text(DATA_NOUN)
    (tmp_path / "data.verb").write_text(DATA_VERB)
    return tmp_path


def test_definitions_and_lexnames(wn_dir):
    docs, lex, ids = wordnet_definitions(wn_dir, parts=("noun", "verb"))
    assert len(docs) == 5 and ids.tolist()[0] == "noun:00001740" and ids[-1] == "verb:00001740"
    assert [LEXNAMES[i] for i in lex] == ["noun.Tops", "noun.animal", "noun.plant", "noun.animal", "verb.body"]
    assert docs[1] == "a living organism characterized by voluntary movement"  # the quoted example is cut
    assert docs[4] == "draw air into, and expel out of, the lungs"
    with pytest.raises(DNMFValueError, match="data.adj"):
        wordnet_definitions(wn_dir, parts=("adj",))


def test_corpus_classes(wn_dir):
    tc = wordnet_corpus(wn_dir, parts=("noun", "verb"), min_df=1, max_df=1.0)
    assert list(tc.label_names) == ["noun.Tops", "noun.animal", "noun.plant", "verb.body"]
    assert tc.X.shape[0] == 5 and tc.y.tolist() == [0, 1, 2, 1, 3]
    assert np.array_equal(tc.groups, np.arange(5))  # one document per definition
    assert "organism" in set(tc.feature_names) and "animals" not in set(tc.feature_names)


def test_cli_ingest_wordnet(wn_dir, tmp_path):
    import dnmf_dask as dd
    from dnmf_dask.cli import main

    # the default vectorizer keeps words in >= 2 definitions: "living", "organism", "air" here
    assert main(["ingest", "wordnet", str(tmp_path / "wn.zarr"), "--input", str(wn_dir)]) == 2  # no data.adj/adv
    for part in ("adj", "adv"):
        (wn_dir / f"data.{part}").write_text(DATA_VERB.replace(" 29 v ", " 00 a " if part == "adj" else " 02 r "))
    assert main(["ingest", "wordnet", str(tmp_path / "wn.zarr"), "--input", str(wn_dir)]) == 0
    c = dd.open_corpus(tmp_path / "wn.zarr")
    assert "noun.animal" in list(c.label_names) and c.y_true is not None
