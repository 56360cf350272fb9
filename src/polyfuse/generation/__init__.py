"""Generation: fused tokens, through a projector, as the prefix of a causal language model
(ClipCap, LLaVA): captions, answers and transcripts from images, audio and text."""
