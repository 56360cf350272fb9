"""Cross-modal search: embed a collection, index it with FAISS, query it with any modality."""
from .config import RetrievalConfig
from .embed import FUSED, Embedder, embed_to_folder, load_embeddings, model_identity
from .index import Index, index_collection
from .metrics import evaluate_retrieval, rank_metrics, relevance, zero_shot_metrics
from .search import search, zero_shot

__all__ = ["RetrievalConfig", "FUSED", "Embedder", "embed_to_folder", "load_embeddings", "model_identity",
           "Index", "index_collection", "evaluate_retrieval", "rank_metrics", "relevance", "search", "zero_shot",
           "zero_shot_metrics"]
