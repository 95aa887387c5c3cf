"""voicepipe.store: content-addressed artifacts with provenance, on a local directory or S3/MinIO.

    store = open_store(settings)                    # or open_store("s3://bucket/prefix"), open_store("/abs/dir")
    ref = store.put_file(wav, step="corpus.ingest", inputs=[episode_sha], params={"sr": 24000})
    store.get_file(ref.sha256, "out.wav")           # verified against the hash
    store.lineage(ref.sha256)                       # sidecars back to the source episode
    store.set_ref("voices/alice", tree_sha, {"sim": 0.8}); store.get_ref("voices/alice")
    store.memo_get("corpus.ingest", key) / store.memo_put("corpus.ingest", key, sha)
"""

from voicepipe.store.backends import Backend, LocalBackend, S3Backend
from voicepipe.store.core import ArtifactRef, ArtifactStore, code_version, open_store

__all__ = ["ArtifactRef", "ArtifactStore", "Backend", "LocalBackend", "S3Backend", "code_version", "open_store"]
