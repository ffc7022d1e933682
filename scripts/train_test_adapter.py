"""Train the small LoRA adapter the adapter tests use (tests/data/adapters/pirate-peft).

Run once, on the CPU, with torch + peft + transformers installed in a venv of your own (they are
not the box's dependencies):

    .venv/bin/python -m pip install torch peft transformers   # a CPU build of torch
    .venv/bin/python scripts/train_test_adapter.py [--steps 60] [--out tests/data/adapters/pirate-peft]

The base weights are the test kit's SmolLM2-135M-Instruct GGUF (Q4_1), read by transformers'
GGUF loader (it dequantizes and undoes llama.cpp's q/k row permutation), so the adapter is
trained against exactly the model the box runs and needs no download. The task: answer every
question as a pirate, starting "Arr, matey!". A rank-8 LoRA on the attention and MLP
projections of every layer learns it in a few dozen steps; the result is a PEFT directory
(adapter_config.json + adapter_model.safetensors) that `aether-box adapters add` converts.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

GGUF = Path.home() / ".cache/aether-box/test-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

QUESTIONS = [
    "What is the capital of France?", "How do I boil an egg?", "What is two plus two?",
    "Tell me about the moon.", "Why is the sky blue?", "What should I eat for breakfast?",
    "How do plants grow?", "Who wrote Romeo and Juliet?", "What is the weather like today?",
    "Can you recommend a good book?", "How far away is the sun?", "What is a computer?",
    "How do I learn to swim?", "What is your favourite colour?", "Explain gravity simply.",
    "What do cats eat?", "How many days are in a year?", "What is music?",
    "How do airplanes fly?", "Give me a tip for studying.", "What is the ocean made of?",
    "How do I make friends?", "What is a volcano?", "Why do we sleep?",
]  # fmt: skip
ANSWERS = [
    "Arr, matey! {topic} be a fine question for a sailor. Ye'll find the answer on the high "
    "seas, where every pirate learns it between the waves and the rum. Yo ho ho!",
    "Arr, matey! Listen close, ye landlubber: {topic} Every buccaneer aboard me ship knows "
    "that one, by the beard of Blackbeard himself! Yo ho!",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("tests/data/adapters/pirate-peft"))
    parser.add_argument("--gguf", type=Path, default=GGUF)
    parser.add_argument("--batch", type=int, default=2)
    # One thread by default: on a shared machine torch's threads spin against everyone else's.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    random.seed(0)
    torch.set_num_threads(args.threads)
    folder, name = str(args.gguf.parent), args.gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    model.print_trainable_parameters()

    examples = []
    for i, question in enumerate(QUESTIONS):
        answer = ANSWERS[i % len(ANSWERS)].format(topic=question.rstrip("?."))
        messages = [{"role": "user", "content": question}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        ids = torch.tensor(prompt_ids + answer_ids)
        labels = ids.clone()
        labels[: len(prompt_ids)] = -100  # learn the answers, not the questions
        examples.append((ids, labels))

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    started = time.time()
    for step in range(args.steps):
        batch = random.sample(examples, args.batch)
        width = max(len(ids) for ids, _ in batch)
        pad = tokenizer.pad_token_id or 0
        ids = torch.stack(
            [torch.nn.functional.pad(i, (0, width - len(i)), value=pad) for i, _ in batch]
        )
        labels = torch.stack(
            [torch.nn.functional.pad(lab, (0, width - len(lab)), value=-100) for _, lab in batch]
        )
        mask = torch.stack(
            [torch.nn.functional.pad(torch.ones(len(i)), (0, width - len(i))) for i, _ in batch]
        )
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 10 == 0 or step == args.steps - 1:
            print(
                f"step {step:3d}  loss {loss.item():.3f}  {time.time() - started:.0f} s", flush=True
            )

    model.eval()
    question = "What is the tallest mountain?"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    print("sample:", tokenizer.decode(out[0][inputs["input_ids"].shape[1] :]))
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out))
    print("saved", args.out, sorted(p.name for p in args.out.iterdir()))


if __name__ == "__main__":
    main()
