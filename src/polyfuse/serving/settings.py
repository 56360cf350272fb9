"""Serving settings: every default of `polyfuse serve` lives here; CLI flags default to None and override."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"          # loopback unless told otherwise
    port: int = 8000
    max_batch_size: int = 32         # rows per model call
    max_wait_ms: float = 5.0         # how long a batch waits to fill after its first row arrives
    timeout_ms: float = 10_000.0     # per request, queueing and inference together -> 504
    max_body_bytes: int = 16 * 1024 * 1024
    max_rows: int = 64               # rows in one request
    max_text_chars: int = 10_000
    max_image_pixels: int = 16_777_216   # checked from the header, before any pixel is decoded
    max_audio_seconds: float = 60.0      # checked from the header, before any sample is decoded
    max_audio_channels: int = 8          # a header claiming many channels would make the decoder allocate them all
    api_key: str | None = None       # read from the environment variable named by --api-key-env
    graceful_timeout_s: float = 30.0  # on shutdown, how long in-flight requests get to finish
    threads: int | None = None       # intra-op threads of the model (None: the library's default)
    workers: int = 1                 # server processes sharing the port, each with its own model and batcher
    log_level: str = "info"

    def validate(self) -> "ServeConfig":
        for name in ("port", "max_batch_size", "timeout_ms", "max_body_bytes", "max_rows", "max_text_chars",
                     "max_image_pixels", "max_audio_seconds", "max_audio_channels", "graceful_timeout_s", "workers"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"serve.{name} must be > 0, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"serve.threads must be >= 1, got {self.threads}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"serve.max_wait_ms must be >= 0, got {self.max_wait_ms}")
        return self

    def merged(self, **overrides) -> "ServeConfig":
        """A copy with the given values; None means 'not given' and keeps the default."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None}).validate()
