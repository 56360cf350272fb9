"""The scikit-learn style Python API, on DataFrames, for each task."""
import numpy as np
import pandas as pd
import pytest

import polyfuse


def _frame(synth, split):
    df = pd.read_csv(synth[split])
    folder = synth[split].parent
    for col in ("image", "audio"):
        df[col] = [str(folder / p) if isinstance(p, str) else None for p in df[col]]
    return df


def test_constructor_only_stores_arguments():
    est = polyfuse.Polyfuse(label="y", size="nonexistent-size", epochs=-5)
    assert (est.label, est.size, est.epochs) == ("y", "nonexistent-size", -5)   # validated at fit, not here


@pytest.mark.parametrize("task, label", [("classification", "label"), ("multilabel", "tags"), ("regression", "score")])
def test_fit_predict_score_save_load(synth, tmp_path, task, label):
    train, test = _frame(synth, "train"), _frame(synth, "test")
    est = polyfuse.Polyfuse(label=label, text="caption", image="image", audio="audio", task=task, size="tiny",
                            epochs=2, out=tmp_path / "run")
    est.fit(train)
    pred = est.predict(test)
    assert len(pred) == len(test)
    if task == "regression":
        assert pred.dtype == float and np.isfinite(pred).all()
        with pytest.raises(AttributeError):
            est.predict_proba(test)
    else:
        proba = est.predict_proba(test)
        assert proba.shape == (len(test), len(est.classes_))
    score = est.score(test)
    assert np.isfinite(score)
    est.save(tmp_path / "saved")
    again = polyfuse.load(tmp_path / "saved")
    assert list(again.predict(test)) == list(pred)


def test_unfitted_model_says_so():
    with pytest.raises(RuntimeError, match="not fitted"):
        polyfuse.Polyfuse(label="y").predict(pd.DataFrame({"a": [1]}))
