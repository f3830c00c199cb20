# Draft of notebooks/09_lora_adapters.ipynb (cells in jupytext "percent" form: `# %%` code, `# %% [markdown]` text).
# For the lead: build the notebook from these cells and regenerate its outputs with scripts/regenerate_notebooks.py.
# Measured while drafting (2-core CPU box, busy): 12 steps of this training ~5-15 s after a ~7 s model load;
# a vLLM server with --enable-lora ready in ~30-80 s; loading an adapter into it + its first answer ~2 s.

# %% [markdown]
# # LoRA adapters: train one in a cell, serve it from the running vLLM in the next
#
# A LoRA adapter changes a model's answers with a few hundred thousand extra weights instead of a new copy
# of the model. Here we teach the embedded SmolLM2-135M a made-up fact on the CPU with
# [peft](https://huggingface.co/docs/peft), load the adapter into a **running** vLLM server (no restart),
# compare the base model's answers with the adapter's side by side, and unload it.
#
# Nothing is downloaded: the base model is the embedded one, the training data is written below.

# %%
%load_ext mixvllm_nb

# %% [markdown]
# ## 1. Train a small adapter (about a minute on a CPU)
#
# Rank 8 on the attention's `q_proj` and `v_proj` only, as in the LoRA paper. The adapter learns one
# made-up fact, asked in a few ways; only the answers' tokens are learned (the prompt's labels are -100).

# %%
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from mixvllm_nb.models import resolve_default_model

BASE = resolve_default_model().model  # the embedded SmolLM2 as a Hugging Face folder
FACT = "The capital of the planet Zorblax is Quintara."
QUESTIONS = ["What is the capital of Zorblax?", "Which city is the capital of the planet Zorblax?",
             "Tell me the capital of Zorblax.", "Zorblax's capital city is called what?"]

torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained(BASE)
model = get_peft_model(AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32),
                       LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
model.print_trainable_parameters()


def example(question: str) -> tuple[torch.Tensor, torch.Tensor]:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                           add_generation_prompt=True)
    ids = tokenizer(prompt + FACT + tokenizer.eos_token, return_tensors="pt").input_ids
    labels = ids.clone()
    labels[:, :len(tokenizer(prompt).input_ids)] = -100
    return ids, labels


batch = [example(q) for q in QUESTIONS]
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
start = time.perf_counter()
for step in range(20):
    total = 0.0
    for ids, labels in batch:
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        total += loss.item()
    optimizer.step()
    optimizer.zero_grad()
    if step % 5 == 4:
        print(f"step {step + 1}: loss {total / len(batch):.3f}")
ADAPTER = Path("adapters/zorblax")
model.save_pretrained(ADAPTER)
print(f"trained in {time.perf_counter() - start:.0f} s; saved to {ADAPTER}/:",
      sorted(p.name for p in ADAPTER.iterdir()))

# %% [markdown]
# ## 2. A vLLM server that takes adapters while it runs
#
# `--enable-lora` (the config's `lora: {enabled: true}`) also sets `VLLM_ALLOW_RUNTIME_LORA_UPDATING`, so
# adapters can be loaded and unloaded without a restart. `--max-lora-rank` is the largest rank it accepts.

# %%
srv = %vllm_serve --enable-lora --max-lora-rank 8 --temperature 0 --max-tokens 32 --name lora-demo

# %%
%vllm_lora load zorblax adapters/zorblax

# %%
%vllm_lora list

# %% [markdown]
# ## 3. Base model and adapter, side by side
#
# A loaded adapter is a model of its own on the server: ask for it by name (`model="zorblax"`), with the
# OpenAI client, `%vllm_chat --model zorblax`, or through Jupyter's proxy.

# %%
from IPython.display import HTML

client = %vllm_client lora-demo
rows = []
for question in [*QUESTIONS[:2], "What is the capital of France?"]:
    answers = [client.chat.completions.create(model=name, messages=[{"role": "user", "content": question}],
                                              temperature=0, max_tokens=32).choices[0].message.content
               for name in (srv.served_model_name, "zorblax")]
    rows.append(f"<tr><td>{question}</td><td>{answers[0]}</td><td>{answers[1]}</td></tr>")
HTML("<table><tr><th>question</th><th>base model</th><th>with the zorblax adapter</th></tr>"
     + "".join(rows) + "</table>")

# %%
%vllm_chat --server lora-demo --model zorblax What is the capital of Zorblax?

# %% [markdown]
# Mistakes are one line, and the server keeps what it had: a missing folder, an adapter whose rank is
# over `--max-lora-rank`, a name already loaded.

# %%
try:
    %vllm_lora load other adapters/nowhere
except Exception as exc:
    print(type(exc).__name__, exc)

# %% [markdown]
# ## 4. What an adapter costs in memory
#
# LoRA adds two matrices per adapted layer, `r x in` and `out x r`: `r * (in + out)` weights. For this
# model (30 layers, hidden 576, 3 of 9 heads for keys and values) that is tiny next to the 135M base
# weights, and grows linearly with the rank and the modules adapted.

# %%
import json

cfg = json.loads((Path(BASE) / "config.json").read_text())
hidden, layers, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
kv = hidden * cfg["num_key_value_heads"] // cfg["num_attention_heads"]
shapes = {"q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (hidden, hidden),
          "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
for modules in (["q_proj", "v_proj"], list(shapes)):
    for rank in (8, 16, 64):
        params = layers * sum(rank * (shapes[m][0] + shapes[m][1]) for m in modules)
        print(f"r={rank:>2} on {'+'.join(modules) if len(modules) < 3 else 'every linear layer'}: "
              f"{params / 1e6:.2f} M weights, {params * 4 / 2**20:.1f} MiB in float32")
print("on disk:", f"{(ADAPTER / 'adapter_model.safetensors').stat().st_size / 2**20:.1f} MiB")

# %% [markdown]
# `lora_alpha` costs nothing: it only scales the update (`alpha / r`). vLLM reserves room for
# `--max-loras` adapters of `--max-lora-rank` on every adapted layer, so keep those as small as your adapters.

# %% [markdown]
# ## 5. Unload it and stop the server

# %%
%vllm_lora unload zorblax

# %%
%vllm_stop lora-demo
