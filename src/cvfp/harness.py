"""lm-evaluation-harness: a trained cvfp model as the harness's model ``cvfp``.

    cvfp-lm-eval --model cvfp --model_args pretrained=DIR_OR_HUB_ID --tasks hellaswag,wikitext

``cvfp-lm-eval`` is ``lm_eval``'s own command line with this module imported first (``lm_eval`` has no
plugin hook that would find a model registered by another package); from Python, ``import cvfp.harness``
and pass ``model="cvfp"`` to ``lm_eval.simple_evaluate``. Every score comes from the true recurrence,
token by token from c_0 = 0, exactly as ``cvfp eval`` scores a text (``tests/test_harness.py`` checks the
two against each other): ``loglikelihood`` (a continuation given a context, and whether it is the greedy
one), ``loglikelihood_rolling`` (a whole text, its first token conditioned on the end-of-text token, the
harness's convention), and ``generate_until`` (greedy or sampled, stopped at any of the ``until`` strings).
The harness needs ``pip install lm-eval``.
"""

from __future__ import annotations

import itertools
import sys

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from cvfp.inference import CVFPLM, load_pretrained


@register_model("cvfp")
class HarnessLM(LM):
    def __init__(self, pretrained: str, device: str | None = None, batch_size: int | str = 1, **_) -> None:
        super().__init__()
        if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "cuda" if torch.cuda.is_available() else "cpu"  # lm_eval's CLI asks for cuda by default
        lm = load_pretrained(pretrained, device=device)
        if not isinstance(lm, CVFPLM):
            raise TypeError(f"{pretrained} holds a {lm.model.cfg.arch} baseline; the harness model is for CVFP models")
        self.lm = lm
        self.eot = lm.tokenizer.eot_id

    @torch.no_grad()
    def _logprobs(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(ids[i+1] | ids[:i+1]) and whether ids[i+1] is the argmax, for i = 0..len-2 (true recurrence)."""
        state = self.lm.new_state()
        logps, greedy = [], []
        for now, nxt in itertools.pairwise(ids):
            logits = self.lm.step(state, torch.tensor([now]))[0].float()
            logps.append(torch.log_softmax(logits, -1)[nxt])
            greedy.append(int(logits.argmax()) == nxt)
        return torch.stack(logps).double(), torch.tensor(greedy)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        out = []
        for request in requests:
            context, continuation = request.args
            prefix = self.lm.tokenizer.encode(context) if context else []
            target = self.lm.tokenizer.encode(continuation)
            ids = [self.eot, *prefix, *target]
            logps, greedy = self._logprobs(ids)
            out.append((float(logps[-len(target) :].sum()), bool(greedy[-len(target) :].all())))
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        return [float(self._logprobs([self.eot, *self.lm.tokenizer.encode(r.args[0])])[0].sum()) for r in requests]

    def generate_until(self, requests) -> list[str]:
        out = []
        for request in requests:
            context, kwargs = request.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample", False) else 0.0
            text = ""
            for piece in self.lm.generate(context, int(kwargs.get("max_gen_toks", 256)), temperature=temperature):
                text += piece
                if any(stop in text for stop in until):
                    break
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
        return out


def main() -> None:
    """``lm_eval``'s command line, with the ``cvfp`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.exit(cli_evaluate())


if __name__ == "__main__":
    main()
