"""Shared pytest setup. Each area owns its fixtures in tests/fixtures/<area>.py."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# 2-core CI: one intra-op thread per process beats oversubscription when servers/workers run beside the tests
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _triton_language_for_the_interpreter() -> None:
    """Where Triton is installed but no GPU is (its kernels can only run in the interpreter here), import
    triton.language under TRITON_INTERPRET=1 once, before anything else imports it: its helpers (`tl.zeros`, ...)
    are made interpreter functions at import, so a kernel test run after another test that imported Triton
    (torch's inductor does) would fail with "Cannot call @triton.jit'd outside of the scope of a kernel". The
    variable is set back; the kernel tests set it themselves while they run."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        return
    import torch

    if torch.cuda.is_available():
        return
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language  # noqa: F401

        _interpreter_index_for_numpy_2()
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


def _interpreter_index_for_numpy_2() -> None:
    """Triton's interpreter (3.6) turns a scalar tensor into an index (a `range` bound in a kernel) with
    int(ndarray), and its scalars are arrays of shape (1,), which NumPy 2.3+ refuses ("only 0-dimensional arrays can
    be converted to Python scalars"): every kernel with such a loop failed in the interpreter. The same conversion,
    through the array's one element."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or getattr(patch, "_voicepipe_index", False):
        return

    def patched(tensor, scope):  # noqa: ANN001, ANN202 - Triton's own signature
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._voicepipe_index = True  # type: ignore[attr-defined]
    interpreter._patch_lang_tensor = patched


_triton_language_for_the_interpreter()

pytest_plugins = [
    "tests.fixtures.store",
    "tests.fixtures.models",
    "tests.fixtures.corpus",
    "tests.fixtures.train",
    "tests.fixtures.prefect",
    "tests.fixtures.serve",
    "tests.fixtures.studio",
]

# The files that take minutes on 2 cores, longest first (`--durations` of a full run, 2026-12-05). `make test` runs
# `--dist loadfile --no-loadscope-reorder`: xdist hands whole files to its workers in collection order, so putting
# these first packs the run longest-first and the short files fill the end, instead of a long file starting last
# while the other workers sit idle (xdist's default order is by the number of tests in a file). Not among them:
# test_studio_browser.py (98 s, mostly waiting on Chromium), whose fake microphone, captured beside the first
# minutes' corpus builds, once came through degraded (0.82 correlation with its source against 0.99998 for the
# take before it) and pocketsphinx then misheard a good take (such a take is now recorded again: its
# `record_checked`); it runs in its collected place, later.
LONG_FILES = (
    "test_prefect_operator.py", "test_corpus_purity.py", "test_corpus_build.py", "test_contract.py",
    "test_corpus_bad_inputs.py", "test_prefect_dask.py", "test_prefect_resume.py",
    "test_evaluate_checkpoints.py", "test_studio_corpus_flow.py", "test_corpus_show_music.py",
    "test_prefect_pipeline.py", "test_train_packing.py", "test_train_fsdp.py", "test_store_infra_live.py",
)


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001
    """Long files first (`LONG_FILES`), the rest in their collected order; tests within a file keep theirs."""
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
