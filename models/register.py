"""`python -m models.register`: add a model the user brings (e.g. EfficientViT-SAM as an OpenVINO IR pair)."""

from __future__ import annotations

from pathlib import Path

import click

from models.paths import default_models_dir
from models.registry import register_model


@click.command()
@click.option("--name", required=True, help="Registry name; the routing table refers to it (e.g. efficientvit-sam).")
@click.option("--encoder", "encoder_xml", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--decoder", "decoder_xml", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--input-size", required=True, type=int, help="Encoder input side S (512 for EfficientViT-SAM).")
@click.option("--logits-size", default=256, show_default=True, type=int, help="Side of the decoder's low-res logits.")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
def main(name: str, encoder_xml: Path, decoder_xml: Path, input_size: int, logits_size: int, models_dir: Path | None):
    spec = register_model(models_dir or default_models_dir(), name, encoder_xml, decoder_xml, input_size, logits_size)
    click.echo(
        f"registered {spec.name}: input {spec.input_size}, sha256 {spec.sha256[:16]}… in {spec.encoder_xml.parent}"
    )


if __name__ == "__main__":
    main()
