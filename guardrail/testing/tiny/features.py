"""Feature extractors of the tiny processors, usable offline without torchaudio."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, GraniteSpeechFeatureExtractor, WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor

from guardrail.testing.tiny.constants import SAMPLING_RATE


def whisper_features(feature_size: int = 128) -> WhisperFeatureExtractor:
    """Whisper log-mel features at 16 kHz (128 bins as in Qwen2-Audio, Voxtral and Audio Flamingo 3)."""
    return WhisperFeatureExtractor(feature_size=feature_size, sampling_rate=SAMPLING_RATE)


class TorchMelGraniteSpeechFeatureExtractor(GraniteSpeechFeatureExtractor):
    """``GraniteSpeechFeatureExtractor`` with torchaudio's ``MelSpectrogram`` redone in plain torch.

    The real class needs torchaudio only for the mel spectrogram (power 2, centred reflect-padded STFT,
    periodic Hann window, HTK mel scale, no filter norm); the rest of its logic is inherited.
    """

    def __init__(
        self,
        sampling_rate: int = SAMPLING_RATE,
        n_fft: int = 512,
        win_length: int = 400,
        hop_length: int = 160,
        n_mels: int = 80,
        projector_window_size: int = 15,
        projector_downsample_rate: int = 5,
        padding_value: float = 0.0,
        **kwargs: Any,
    ) -> None:
        # Skip the parent __init__, which requires torchaudio; set the same attributes.
        SequenceFeatureExtractor.__init__(
            self, feature_size=n_mels, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs
        )
        self.melspec_kwargs = {
            "sample_rate": sampling_rate,
            "n_fft": n_fft,
            "win_length": win_length,
            "hop_length": hop_length,
            "n_mels": n_mels,
        }
        self.mel_fbank = mel_filter_bank(
            num_frequency_bins=n_fft // 2 + 1,
            num_mel_filters=n_mels,
            min_frequency=0.0,
            max_frequency=sampling_rate / 2,
            sampling_rate=sampling_rate,
            norm=None,
            mel_scale="htk",
        ).astype(np.float32)
        self.projector_window_size = projector_window_size
        self.projector_downsample_rate = projector_downsample_rate

    def _melspec(self, audio: torch.Tensor) -> torch.Tensor:
        """Same output as ``torchaudio.transforms.MelSpectrogram(**melspec_kwargs)(audio)``: (B, n_mels, T)."""
        kw = self.melspec_kwargs
        window = torch.hann_window(kw["win_length"], device=audio.device)
        stft = torch.stft(
            audio,
            n_fft=kw["n_fft"],
            hop_length=kw["hop_length"],
            win_length=kw["win_length"],
            window=window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = stft.abs() ** 2  # (B, n_fft // 2 + 1, T)
        fbank = torch.from_numpy(self.mel_fbank).to(audio.device)
        return torch.matmul(power.transpose(-1, -2), fbank).transpose(-1, -2)

    def __call__(self, audios: Any, device: str | None = "cpu") -> BatchFeature:
        batched_audio, audio_lengths = self._get_audios_and_audio_lengths(audios)
        input_features = self._extract_mel_spectrograms(batched_audio, device=device)
        audio_embed_sizes = self._get_num_audio_features(audio_lengths)
        input_features_mask = torch.arange(max(audio_embed_sizes)).view(1, -1) < torch.tensor(audio_embed_sizes).view(
            -1, 1
        )
        return BatchFeature(
            data={
                "input_features": input_features,
                "audio_embed_sizes": audio_embed_sizes,
                "input_features_mask": input_features_mask,
            }
        )

    def _extract_mel_spectrograms(self, audio: torch.Tensor, device: str | None = "cpu") -> torch.Tensor:
        if device is not None:
            audio = audio.to(device)
        bsz = audio.shape[0]
        with torch.no_grad():
            mel = self._melspec(audio.float())
            logmel = mel.transpose(-1, -2).clip_(min=1e-10).log10_()
            mx = logmel.amax(dim=(-2, -1), keepdim=True)
            logmel = torch.maximum(logmel, mx - 8.0).div_(4).add_(1)
            if logmel.shape[1] % 2 == 1:  # drop the last frame if odd
                logmel = logmel[:, :-1]
            return logmel.reshape(bsz, -1, 2 * logmel.shape[-1])  # stack frames in pairs
