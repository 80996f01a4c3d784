"""Evaluation: retrieval quality (BEIR) and answer quality (SQuAD).

:func:`offline.eval.retrieval.evaluate_beir` scores dense, BM25 and hybrid retrieval on a BEIR
folder; :mod:`offline.eval.qa` scores answers on SQuAD.
"""
