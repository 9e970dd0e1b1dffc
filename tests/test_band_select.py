"""The one band-selection rule: 1-based numbers or names (exact, else unique ignoring case)."""

import pytest

from engine.data.sources.band_select import band_positions, parse_band_list
from engine.errors import UserError

NAMES = ["B2", "B3", "B4", "b8", "B8A", "4"]


@pytest.mark.parametrize(
    ("wanted", "positions"),
    [
        ([1, 3], [0, 2]),
        (["2", "1"], [1, 0]),  # digit strings from a command line are numbers ...
        (["4"], [5]),  # ... unless a band carries that name
        (["b4", "B8", "b8a"], [2, 3, 4]),  # a unique case-insensitive match
        ("B3", [1]),
    ],
)
def test_numbers_and_names_resolve_to_positions(wanted, positions):
    assert band_positions(wanted, NAMES, "x.tif") == positions


def test_numbers_follow_the_files_numbering():
    # bands numbered as a caller counts them (here a file's bands 1, 2 and 4)
    assert band_positions([4, 1], ["red", "green", "blue"], "x.tif", numbers=[1, 2, 4]) == [2, 0]


class ProbeError(UserError):
    pass


@pytest.mark.parametrize(
    ("wanted", "message"),
    [
        ([7], r"x\.tif: no band 7 \(bands are 1-based; available: 1:B2, 2:B3"),
        ([0], "no band 0"),
        (["nir"], "x.tif: no band named 'nir'"),
        ([1, "b2"], "band 'b2' selected twice"),
        ([], "empty band selection"),
    ],
)
def test_bad_selections_are_one_line_errors_of_the_callers_type(wanted, message):
    with pytest.raises(ProbeError, match=message) as caught:
        band_positions(wanted, NAMES, "x.tif", error=ProbeError)
    assert "\n" not in str(caught.value)


def test_a_name_two_bands_share_is_ambiguous_and_pictures_may_repeat_a_band():
    with pytest.raises(UserError, match="several bands named 'red'"):
        band_positions(["red"], ["Red", "RED", "nir"], "x.tif")
    assert band_positions(["RED"], ["Red", "RED", "nir"], "x.tif") == [1]  # exact wins
    assert band_positions(["B3", "B3", 1], NAMES, "show", distinct=False) == [1, 1, 0]


def test_command_line_lists():
    assert parse_band_list("4, 3,2") == (4, 3, 2)
    assert parse_band_list("B4,B3,B2") == ("B4", "B3", "B2")
    assert parse_band_list(None) is None
