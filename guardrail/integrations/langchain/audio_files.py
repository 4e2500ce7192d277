"""Local audio for `file://` URLs: moved to `guardrail.policy.audio_files` (shared with `guardrail serve`);
re-exported here for existing imports."""

from guardrail.policy.audio_files import MIN_FILE_BYTES, AudioFiles, read_audio_file

__all__ = ["MIN_FILE_BYTES", "AudioFiles", "read_audio_file"]
