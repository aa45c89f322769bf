"""Prometheus text exposition of the service's statistics, named after Triton's nv_inference_*."""

from __future__ import annotations

from server.core.service import InferenceService

_COUNTERS = [
    ("nv_inference_request_success", "Number of successful inference requests", lambda s: s.durations["success"].count),
    ("nv_inference_request_failure", "Number of failed inference requests", lambda s: s.durations["fail"].count),
    ("nv_inference_count", "Number of inferences performed (batch elements)", lambda s: s.inference_count),
    ("nv_inference_exec_count", "Number of model executions", lambda s: s.execution_count),
    ("nv_inference_request_duration_us", "Cumulative request duration in microseconds",
     lambda s: s.durations["success"].ns // 1000),
    ("nv_inference_queue_duration_us", "Cumulative queue duration in microseconds",
     lambda s: s.durations["queue"].ns // 1000),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds",
     lambda s: s.durations["compute_input"].ns // 1000),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     lambda s: s.durations["compute_infer"].ns // 1000),
    ("nv_inference_compute_output_duration_us", "Cumulative compute output duration in microseconds",
     lambda s: s.durations["compute_output"].ns // 1000),
]


def render(service: InferenceService) -> str:
    versions = service.loaded_versions()
    lines: list[str] = []
    for name, help_text, getter in _COUNTERS:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} counter")
        for mv in versions:
            lines.append(f'{name}{{model="{mv.name}",version="{mv.version}"}} {getter(mv.stats)}')
    lines.append("# HELP nv_inference_pending_request_count Instantaneous number of pending requests")
    lines.append("# TYPE nv_inference_pending_request_count gauge")
    for mv in versions:
        lines.append(f'nv_inference_pending_request_count{{model="{mv.name}",version="{mv.version}"}} {mv.stats.pending}')
    lines.append("# HELP nv_inference_batch_exec_count Number of model executions per batch size")
    lines.append("# TYPE nv_inference_batch_exec_count counter")
    for mv in versions:
        for size, b in sorted(mv.stats.batches.items()):
            lines.append(f'nv_inference_batch_exec_count{{model="{mv.name}",version="{mv.version}",'
                         f'batch_size="{size}"}} {b.compute_infer.count}')
    lines.append("# HELP nv_inference_sequence_live_count Instantaneous number of live sequences")
    lines.append("# TYPE nv_inference_sequence_live_count gauge")
    for mv in versions:
        live = service.sequences.count(mv.name, mv.version)
        lines.append(f'nv_inference_sequence_live_count{{model="{mv.name}",version="{mv.version}"}} {live}')
    return "\n".join(lines) + "\n"
