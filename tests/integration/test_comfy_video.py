"""A ComfyUI video job end to end against the fake ComfyUI on 127.0.0.1: a raw workflow
with CreateVideo + SaveVideo (and SaveWEBM) is stored with its width, height and
duration, like an animated image."""

from __future__ import annotations

from collections.abc import Callable

from tests.integration.conftest import Pair

from orchestrator.config import Settings
from orchestrator.domain.jobs import JobStatus
from orchestrator.domain.params import ComfyRawParams, ComfyRequest
from orchestrator.engine.worker import WorkerOptions
from orchestrator.runtime import open_runtime

VIDEO_WORKFLOW = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 160, "height": 96, "batch_size": 9, "color": 255},
    },
    "2": {
        "class_type": "EmptyImage",
        "inputs": {"width": 160, "height": 96, "batch_size": 9, "color": 16711680},
    },
    "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
    "4": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": 12.0}},
    "5": {
        "class_type": "SaveVideo",
        "inputs": {
            "video": ["4", 0],
            "filename_prefix": "video/orchestrator",
            "format": "auto",
            "codec": "auto",
        },
    },
    "6": {
        "class_type": "SaveWEBM",
        "inputs": {
            "images": ["3", 0],
            "filename_prefix": "orchestrator_webm",
            "codec": "vp9",
            "fps": 24.0,
            "crf": 32.0,
        },
    },
}


async def test_video_outputs_record_size_and_duration(
    comfy_settings: Callable[..., Settings], comfy: Pair
) -> None:
    settings = comfy_settings()
    opts = WorkerOptions(
        concurrency=2, lease_s=settings.lease_s, poll_interval_s=0.05, shutdown_grace_s=5
    )
    async with open_runtime(settings, run_worker=True, worker_options=opts) as rt:
        job, _ = await rt.service.submit(
            ComfyRequest(params=ComfyRawParams.model_validate({"workflow": VIDEO_WORKFLOW}))
        )
        done = await rt.service.wait_for(job.id, 30)
        assert done.status == JobStatus.SUCCEEDED, done.error
        by_mime = {o.mime_type: o for o in done.outputs}
        assert set(by_mime) == {"video/mp4", "video/webm"}
        mp4, webm = by_mime["video/mp4"], by_mime["video/webm"]
        # 18 frames at 12 fps and at 24 fps
        assert (mp4.width, mp4.height, mp4.duration_s) == (160, 96, 1.5)
        assert (webm.width, webm.height, webm.duration_s) == (160, 96, 0.75)
        assert mp4.path.endswith(".mp4") and webm.path.endswith(".webm")
        stored = rt.service.store.resolve(mp4.path).read_bytes()
    sent = (comfy[0].output_dir / "video" / "orchestrator_00001_.mp4").read_bytes()
    assert stored == sent  # the file ComfyUI wrote, as is
