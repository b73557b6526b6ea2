"""The backend's options: ours under `flash.`, Inductor's passed through, bad ones refused early."""
import pytest

from fa_inductor.options import FlashOptions, make_flash_options, split_options, to_compile_options


def test_defaults_compile_with_inductor_and_rewrite():
    flash, patches = split_options(None, None)
    assert flash == FlashOptions(compiler="inductor", rewrite=True, fp8=False)
    assert patches == {}


def test_flash_prefixed_keys_are_ours_and_the_rest_go_to_inductor():
    flash, patches = split_options(None, {"flash.compiler": "aot_eager", "max_autotune": True})
    assert flash.compiler == "aot_eager"
    assert patches == {"max_autotune": True}


def test_mode_expands_to_inductor_settings_like_backend_inductor():
    _, patches = split_options("max-autotune-no-cudagraphs", None)
    assert patches["max_autotune"] is True


@pytest.mark.parametrize(
    "options, error, words",
    [
        ({"flash.compilr": "aot_eager"}, ValueError, "unknown fa_inductor option"),
        ({"flash.compiler": "tvm"}, ValueError, "must be one of"),
        ({"flash.rewrite": "yes"}, TypeError, "must be a bool"),
        ({"not_an_inductor_key": 1}, ValueError, "neither an fa_inductor option"),
        ({"max_autotune": "very"}, TypeError, "must be bool"),
    ],
)
def test_bad_options_fail_with_a_clear_message(options, error, words):
    with pytest.raises(error, match=words):
        split_options(None, options)


def test_unknown_mode_is_a_value_error():
    with pytest.raises(ValueError, match="Unrecognized mode"):
        split_options("fastest-please", None)


def test_fp8_is_refused_until_it_exists():
    with pytest.raises(NotImplementedError, match="fp8"):
        make_flash_options(fp8=True)


def test_round_trip_through_compile_options():
    flash = FlashOptions(compiler="eager", rewrite=False)
    again, patches = split_options(None, to_compile_options(flash, {"max_autotune": False}))
    assert again == flash and patches == {"max_autotune": False}
