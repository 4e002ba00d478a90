"""``deepfill-demo``: the browser demo (see :mod:`deepfill.demo`).

deepfill-demo                                   # weights found under outputs/, on localhost:7860
deepfill-demo weights=places2_v1.pt port=8000
deepfill-demo host=0.0.0.0                      # serve it to your network
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from deepfill.cli.launch import hydra_command
from deepfill.utils.devices import resolve_device
from deepfill.utils.errors import UserError

__all__ = ["main", "serve"]


def serve(cfg: DictConfig, block: bool = True):
    """Build the page from ``cfg`` and start serving it; returns the Gradio app."""
    from deepfill.utils.precision import check_precision

    port = cfg.port
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
        raise UserError(f"port: must be a port number (0-65535; 0 picks a free one), got {port!r}")
    if cfg.weights is not None:
        from deepfill.utils.checkpoints import check_weights_path

        check_weights_path(cfg.weights)
    precision = check_precision(cfg.precision)
    # Gradio and PyTorch (seconds to import) once the simple keys are known to be right.
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError(
            "the demo needs Gradio: pip install 'deepfill[demo]' (make install includes it)"
        ) from None
    from deepfill.demo import Demo, build_app
    from deepfill.models import CPU_CHUNK_BYTES_REUSED
    from deepfill.utils.cpu import configure_cpu

    chunk_bytes = CPU_CHUNK_BYTES_REUSED if configure_cpu() else None
    device = "auto" if cfg.device == "auto" else resolve_device(cfg.device)
    demo = Demo(list(cfg.search), cfg.weights, device, int(cfg.max_side), precision, chunk_bytes)
    if cfg.weights is not None:
        demo.generator(demo.weights)  # loaded now: unreadable weights stop here, in one line
    app = build_app(demo, cfg.files_dir)
    app.launch(
        server_name=str(cfg.host),
        server_port=port or None,
        prevent_thread_lock=not block,
        show_error=True,
        allowed_paths=[str(cfg.files_dir)],
    )
    return app


main = hydra_command("deepfill-demo", "demo", serve)


if __name__ == "__main__":
    sys.exit(main())
