"""MovieLens data processing (on a tiny file set in the real format) and the ranking model in local mode."""
import numpy as np
import pytest

from worker.model import Estimator, RunConfig
from worker.models.movielens import MovieRankingModel, make_dataset
from worker.models.movielens_data import load_movielens

pytestmark = pytest.mark.slow  # trains models end to end: left out of `make test-fast`

INTER = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
USER = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
        "1\t24\tM\ttechnician\t85711", "2\t53\tF\tother\t94043", "3\t23\tM\twriter\t32067"]
ITEM = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
        "10\tToy Story\t1995\tAnimation Children's Comedy", "20\tGoldenEye\t1995\tAction Adventure Thriller",
        "30\tFour Rooms\t1995\tThriller"]


@pytest.fixture(autouse=True)
def private_user_cache(tmp_path, monkeypatch):
    """Tests write fake raw files: keep them out of the real ~/.cache copy."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))


def _write_raw(root, n=200, seed=0):
    rng = np.random.RandomState(seed)
    rows = []
    for i in range(n):
        u, it = rng.randint(1, 4), rng.choice([10, 20, 30])
        rating = 5 if (u == 1) == (it == 10) else rng.randint(1, 4)  # learnable pattern
        rows.append(f"{u}\t{it}\t{rating}\t{1000 + (n - i) * 7}")  # file order is not time order
    raw = root / "raw"
    raw.mkdir(parents=True)
    (raw / "ml-100k.inter").write_text("\n".join(INTER + rows) + "\n")
    (raw / "ml-100k.user").write_text("\n".join(USER) + "\n")
    (raw / "ml-100k.item").write_text("\n".join(ITEM) + "\n")
    return rows


def test_processing_vocab_labels_genres_and_time_split(tmp_path):
    rows = _write_raw(tmp_path)
    data = load_movielens(tmp_path)
    assert (tmp_path / "ml-100k.npz").exists() and data.size == len(rows)
    assert data.vocab_sizes == {"uid": 3, "item": 3, "age": 3, "gender": 2, "occupation": 3, "zip": 3, "genres": 6}
    assert np.all(np.diff(data.columns["timestamp"]) >= 0)
    by_time = sorted((int(r.split("\t")[3]), r.split("\t")) for r in rows)
    expected_label = np.array([float(int(r[2]) >= 4) for _, r in by_time], np.float32)
    np.testing.assert_array_equal(data.columns["label"], expected_label)
    # genres of item "30" (index 2) is just Thriller; "20" has three
    lengths = np.diff(data.genre_splits)
    items = data.columns["item"]
    assert set(lengths[items == 2]) == {1} and set(lengths[items == 1]) == {3} and set(lengths[items == 0]) == {3}
    train, test = data.split(0.8)
    assert (train.size, test.size) == (160, 40)
    assert train.columns["timestamp"].max() <= test.columns["timestamp"].min()
    assert test.genre_splits[0] == 0 and test.genre_splits[-1] == test.genre_values.size
    batch = next(iter(make_dataset(test, 16)))
    assert batch["genres"].shape[0] == 16 and batch["uid"].values.shape == (16,)
    np.testing.assert_array_equal(batch["genres"][0].numpy(), test.genre_values[:test.genre_splits[1]])
    again = load_movielens(tmp_path)  # from the processed cache: raw files no longer needed
    np.testing.assert_array_equal(again.columns["uid"], data.columns["uid"])


def test_movie_ranking_model_trains_locally(tmp_path):
    _write_raw(tmp_path / "data", n=600)
    model = MovieRankingModel(data_dir=str(tmp_path / "data"), batch_size=32, learning_rate=0.2)
    est = Estimator(model, RunConfig(model_dir=str(tmp_path / "m"), log_step_count_steps=1000))
    est.train(60)
    metrics = est.evaluate()
    assert metrics["examples"] == 120 and metrics["ctr_auc"] > 0.9
    assert set(est.table_sizes()) == {"uid", "item", "age", "gender", "occupation", "zip", "genres"}


def test_raw_copy_outside_the_repo_serves_a_fresh_cache_offline(tmp_path, monkeypatch):
    import worker.models.movielens_data as mld

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _write_raw(tmp_path / "first")
    first = load_movielens(tmp_path / "first")  # keeps a copy under $XDG_CACHE_HOME/monolith/ml-100k
    assert (tmp_path / "xdg" / "monolith" / "ml-100k" / "ml-100k.inter").exists()

    def offline(raw_dir):
        raise RuntimeError("offline")

    monkeypatch.setattr(mld, "_download_raw", offline)
    second = load_movielens(tmp_path / "fresh-clone")
    np.testing.assert_array_equal(second.columns["label"], first.columns["label"])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="offline"):
        load_movielens(tmp_path / "nothing-anywhere")


def test_processes_of_one_job_build_the_same_cache_at_once(tmp_path):
    """Every role of a job may be first to use a fresh clone: concurrent builds must all succeed."""
    import concurrent.futures

    _write_raw(tmp_path)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        loaded = list(pool.map(lambda _: load_movielens(tmp_path), range(16)))
    for data in loaded:
        np.testing.assert_array_equal(data.columns["label"], loaded[0].columns["label"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml-100k.npz", "raw", "user-cache"]
