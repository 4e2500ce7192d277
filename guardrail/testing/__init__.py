"""Helpers for users' own tests: ``guardrail.testing.tiny`` builds tiny offline models of every family.

Real-weight testbeds (pretrained models, the Qwen2-Audio testbed, speech synthesis) are a separate
package, ``pip install -e ./testbeds``; see ``guardrail.models.testbeds``.
"""
