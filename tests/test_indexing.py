"""The enums and tables of models.wire.enums against protocol.md §2 and Appendix A."""

from __future__ import annotations

from models.wire.enums import (
    ActivationLocationType,
    AttentionTraceType,
    DerivedScalarType,
    Dimension,
    GroupId,
    NodeType,
    PassType,
    SpecType,
    TensorType,
)
from models.wire.shapes import DST_INFO, LOCATION_INFO


def test_enum_values_are_the_wire_strings():
    assert PassType("forward") is PassType.FORWARD
    assert AttentionTraceType.QK == "QK"
    assert TensorType.TENSOR_0D == "tensor_0d"
    assert SpecType.TDB_REQUEST_SPEC == "tdb_request_spec"
    assert ActivationLocationType.RESID_FINAL_LAYER_NORM_SCALE == "resid.ln_f.scale"
    assert f"{NodeType.MLP_NEURON}" == "mlp_neuron"


def test_dst_values_are_lower_case_names_in_declaration_order():
    values = [d.value for d in DerivedScalarType]
    assert len(values) == 106
    assert all(d.value == d.name.lower() for d in DerivedScalarType)
    assert values[:3] == ["logits", "resid_post_embedding", "mlp_pre_act"]
    assert values[-1] == "online_attention_autoencoder_write_to_final_activation_residual_grad"
    assert values.index("token_attribution") == 71


def test_every_dst_and_location_has_a_table_row():
    assert set(DST_INFO) == set(DerivedScalarType)
    assert set(LOCATION_INFO) == set(ActivationLocationType)


def test_dst_rows_follow_appendix_a():
    info = DST_INFO[DerivedScalarType.UNFLATTENED_ATTN_ACT_TIMES_GRAD]
    assert info.dims == (
        Dimension.SEQUENCE_TOKENS,
        Dimension.ATTENDED_TO_SEQUENCE_TOKENS,
        Dimension.ATTN_HEADS,
    )
    assert info.node_type is NodeType.ATTENTION_HEAD
    assert (info.needs_grad_for_forward, info.autoencoder, info.has_no_layers) == (
        True,
        False,
        False,
    )
    ae = DST_INFO[DerivedScalarType.ONLINE_MLP_AUTOENCODER_ACT_TIMES_GRAD]
    assert (ae.node_type, ae.needs_grad_for_forward, ae.autoencoder) == (
        NodeType.MLP_AUTOENCODER_LATENT,
        True,
        True,
    )
    assert DST_INFO[DerivedScalarType.ALWAYS_ONE].dims == (
        Dimension.SEQUENCE_TOKENS,
        Dimension.SINGLETON,
    )


def test_gradient_needing_dsts_are_those_of_engine_3_8():
    needing = {d.value for d, info in DST_INFO.items() if info.needs_grad_for_forward}
    assert len(needing) == 33
    assert {
        "token_attribution",
        "mlp_act_times_grad",
        "single_node_write_to_final_residual_grad",
    } <= needing
    assert "mlp_write_norm" not in needing
    assert "mlp_write_to_final_activation_residual_grad" not in needing


def test_dsts_without_layers_are_those_from_embeddings_final_norm_and_logits():
    no_layers = {d.value for d, info in DST_INFO.items() if info.has_no_layers}
    assert no_layers == {
        "logits",
        "resid_post_embedding",
        "resid_final_layer_norm_scale",
        "resid_post_embedding_norm",
        "resid_post_embedding_proj_to_final_residual_grad",
        "resid_post_embedding_proj_to_final_activation_residual_grad",
        "token_attribution",
        "token_out_edge_attribution",
        "vocab_token_write_to_input_direction",
        "always_one",
    }


def test_location_rows_follow_engine_1_5():
    k = LOCATION_INFO[ActivationLocationType.ATTN_KEY]
    assert k.dims == (
        Dimension.ATTENDED_TO_SEQUENCE_TOKENS,
        Dimension.ATTN_HEADS,
        Dimension.QUERY_AND_KEY_CHANNELS,
    )
    assert k.node_type is NodeType.QK_CHANNEL
    no_layers = {loc.value for loc, info in LOCATION_INFO.items() if info.has_no_layers}
    assert no_layers == {"resid.post_emb", "resid.ln_f.scale", "resid.post_ln_f", "logits"}
    not_hookable = {loc.value for loc, info in LOCATION_INFO.items() if not info.hookable}
    assert not_hookable == {"resid.post_mlp_ln", "resid.post_attn_ln", "resid.post_ln_f"}
    autoencoder = {loc.value for loc, info in LOCATION_INFO.items() if info.autoencoder}
    assert len(autoencoder) == 6 and all(v.startswith("online_") for v in autoencoder)


def test_group_exclude_bottom_k_property():
    top_only = {g.value for g in GroupId if g.exclude_bottom_k}
    assert top_only == {"activation", "logits", "write_norm"}


def test_node_and_dimension_helpers():
    assert NodeType.ATTENTION_AUTOENCODER_LATENT.is_autoencoder
    assert not NodeType.LAYER.is_autoencoder
    assert Dimension.ATTENDED_TO_SEQUENCE_TOKENS.is_sequence
    assert not Dimension.MLP_ACTS.is_sequence


def test_backward_variants_exist_for_raw_values_and_a_few_others():
    backward = {
        d.value for d, info in DST_INFO.items() if info.supports_backward and not info.autoencoder
    }
    assert {"mlp_post_act", "attn_qk_probs", "logits", "unflattened_attn_write_norm"} <= backward
    assert {"previous_layer_resid_post_mlp", "always_one"} <= backward
    assert not {"mlp_write_norm", "mlp_act_times_grad", "attn_write_norm"} & backward
    assert len(backward) == 21
