"""The text path: prompts through a real (tiny, randomly initialised) Qwen2.5-VL text encoder and a word tokenizer,
saved into and loaded from a pipeline folder like Qwen-Image's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from pipeline_teasr import TEASRPipeline
from pipeline_teasr.pipeline_teasr import QWEN_IMAGE_PROMPT_TEMPLATE

from .conftest import TINY_PIXEL_CONFIG, make_tiny_pipeline, random_photo

WORDS = ("a", "photo", "of", "cat", "sharp", "detailed", "blurry", "landscape")


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[PAD]": 0, "[UNK]": 1, **{word: index + 2 for index, word in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]")


def _text_encoder(width: int) -> Qwen2_5_VLForConditionalGeneration:
    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(WORDS) + 2,
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
            rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]},
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=0,
        ),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=width),
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def text_pipeline(tmp_path_factory) -> TEASRPipeline:
    tiny = make_tiny_pipeline()
    pipe = TEASRPipeline(
        transformer=tiny.transformer,
        scheduler=tiny.scheduler,
        text_encoder=_text_encoder(TINY_PIXEL_CONFIG["joint_attention_dim"]),
        tokenizer=_tokenizer(),
    )
    folder = tmp_path_factory.mktemp("teasr_with_text")
    pipe.save_pretrained(folder)
    loaded = TEASRPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    return loaded


def _upscale(pipe: TEASRPipeline, image, **kwargs) -> np.ndarray:
    """The output latents (pixel space, unclamped: differences are not hidden by clipping)."""
    return pipe(image, start="lq", output_type="latent", **kwargs).images.numpy()


def test_a_prompt_conditions_the_output_and_equals_its_embeddings(text_pipeline):
    assert type(text_pipeline.text_encoder).__name__ == "Qwen2_5_VLForConditionalGeneration"
    image = random_photo(12, 12)
    prompt = "a sharp photo of a cat"
    with_prompt = _upscale(text_pipeline, image, prompt=prompt)
    assert np.abs(with_prompt - _upscale(text_pipeline, image)).max() > 1e-3  # not the null prompt's output
    assert np.abs(with_prompt - _upscale(text_pipeline, image, prompt="a blurry landscape")).max() > 1e-3
    embeds, mask = text_pipeline.encode_prompt(prompt, torch.device("cpu"))
    assert embeds.shape == (1, 6, TINY_PIXEL_CONFIG["joint_attention_dim"]) and mask.tolist() == [[1] * 6]
    np.testing.assert_allclose(
        _upscale(text_pipeline, image, prompt_embeds=embeds, prompt_embeds_mask=mask), with_prompt, atol=1e-6
    )


def test_one_prompt_per_image_and_padding_changes_nothing(text_pipeline):
    first, second = random_photo(12, 12, seed=1), random_photo(10, 14, seed=2)
    short, long = "a cat", "a sharp detailed photo of a blurry landscape"
    together = text_pipeline([first, second], prompt=[short, long], start="lq", output_type="latent").images
    # The short prompt was padded to the long one's length in the batch; its masked padding must not leak in.
    # Images of different sizes come back as a list with one (C, H, W) latent each.
    np.testing.assert_allclose(together[0].numpy(), _upscale(text_pipeline, first, prompt=short)[0], atol=1e-5)
    np.testing.assert_allclose(together[1].numpy(), _upscale(text_pipeline, second, prompt=long)[0], atol=1e-5)


def test_prompt_errors_are_one_line(text_pipeline, tiny_pipeline):
    image = random_photo(8, 8)
    with pytest.raises(ValueError, match="needs a pipeline with `text_encoder` and `tokenizer`; pass `prompt_embeds`"):
        tiny_pipeline(image, prompt="a cat")
    with pytest.raises(ValueError, match="a list of 2 strings"):
        text_pipeline([image, image], prompt=["a cat"])
    with pytest.raises(ValueError, match="either `prompt` or `prompt_embeds`"):
        text_pipeline(image, prompt="a cat", prompt_embeds=torch.zeros(1, 2, TINY_PIXEL_CONFIG["joint_attention_dim"]))
    embeds = torch.zeros(1, 5, TINY_PIXEL_CONFIG["joint_attention_dim"])
    with pytest.raises(
        ValueError, match=r"`prompt_embeds_mask` must be \(1, 5\), one entry per `prompt_embeds` token"
    ):
        text_pipeline(image, prompt_embeds=embeds, prompt_embeds_mask=torch.ones(1, 3))


def _with_template(text_pipeline: TEASRPipeline, template: str | None, drop: int) -> TEASRPipeline:
    return TEASRPipeline(
        transformer=text_pipeline.transformer,
        scheduler=text_pipeline.scheduler,
        text_encoder=text_pipeline.text_encoder,
        tokenizer=text_pipeline.tokenizer,
        prompt_template=template,
        prompt_template_drop_tokens=drop,
    )


def test_a_prompt_template_wraps_the_prompt_and_its_leading_tokens_are_dropped(text_pipeline, tmp_path):
    cpu = torch.device("cpu")
    pipe = _with_template(text_pipeline, "a photo of {}", 3)
    embeds, mask = pipe.encode_prompt("sharp cat", cpu)
    # By hand: the encoder's states of the whole wrapped text, minus the template's three leading tokens.
    ids = text_pipeline.tokenizer("a photo of sharp cat", return_tensors="pt").input_ids
    with torch.no_grad():
        states = text_pipeline.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(embeds, states[:, 3:])
    assert mask.tolist() == [[1, 1]]
    plain, _ = text_pipeline.encode_prompt("sharp cat", cpu)
    assert (plain - embeds).abs().max() > 1e-4  # the template is read: a causal encoder's states depend on it

    # In a batch, each prompt's states and mask are its own (padding after the dropped tokens, not before).
    batch, batch_mask = pipe.encode_prompt(["cat", "sharp detailed blurry landscape"], cpu)
    assert batch_mask.tolist() == [[1, 0, 0, 0], [1, 1, 1, 1]]
    torch.testing.assert_close(batch[0, :1], pipe.encode_prompt("cat", cpu)[0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        batch[1], pipe.encode_prompt("sharp detailed blurry landscape", cpu)[0][0], atol=1e-5, rtol=0
    )

    pipe.save_pretrained(tmp_path / "templated")
    loaded = TEASRPipeline.from_pretrained(tmp_path / "templated")
    assert (loaded.config.prompt_template, loaded.config.prompt_template_drop_tokens) == ("a photo of {}", 3)
    with pytest.raises(ValueError, match="must contain"):
        _with_template(text_pipeline, "no slot", 0)


def test_a_qwen_image_folder_gets_qwen_image_prompt_template(text_pipeline, tmp_path):
    text_pipeline.save_pretrained(tmp_path)
    index_file = tmp_path / "model_index.json"
    index = json.loads(index_file.read_text())
    index["_class_name"] = "QwenImagePipeline"  # as in Qwen/Qwen-Image's folder
    for key in ("prompt_template", "prompt_template_drop_tokens"):
        index.pop(key, None)
    index_file.write_text(json.dumps(index))
    loaded = TEASRPipeline.from_pretrained(tmp_path)
    assert loaded.config.prompt_template == QWEN_IMAGE_PROMPT_TEMPLATE
    assert loaded.config.prompt_template_drop_tokens == 34
    assert QWEN_IMAGE_PROMPT_TEMPLATE.format("x").endswith("<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n")
