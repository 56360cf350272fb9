"""Encoded labels are kept in one tensor where they share a shape; each row reads as before."""
import numpy as np
import torch

from polyfuse.data.dataset import Labels


def test_equal_shapes_pack_into_one_tensor_and_read_back_row_by_row():
    values = [torch.tensor(2), None, torch.tensor(0), torch.tensor(1)]
    packed = Labels.pack(values)
    assert isinstance(packed, Labels) and packed.values.shape == (4,)
    assert [None if v is None else int(v) for v in packed] == [2, None, 0, 1]
    assert packed[1] is None and int(packed[-1]) == 1
    assert [int(v) for v in packed[2:]] == [0, 1]
    multi = Labels.pack([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])])
    assert torch.equal(torch.stack(list(multi)), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_varying_shapes_stay_a_list():
    ids = [torch.tensor([5, 6, 2]), torch.tensor([7, 2])]         # generation targets
    assert Labels.pack(ids) is ids
    assert Labels.pack([None, None]) == [None, None]


def test_a_large_label_set_costs_bytes_per_row_not_python_objects():
    packed = Labels.pack([torch.tensor(i % 4) for i in range(100_000)])
    size = packed.values.element_size() * packed.values.numel() + packed.present.nbytes
    assert isinstance(packed, Labels) and size <= 10 * 100_000
    assert packed.present.dtype == np.bool_


def test_the_buffer_turns_into_a_list_at_the_first_label_of_another_shape():
    from polyfuse.data.dataset import LabelBuffer
    buffer = LabelBuffer(5)
    for y in [torch.tensor([1, 2]), None, torch.tensor([3, 4]), torch.tensor([5, 6, 7])]:
        buffer.add(y)
    out = buffer.result()
    assert isinstance(out, list) and len(out) == 4 and out[1] is None
    assert [t.tolist() for t in (out[0], out[2], out[3])] == [[1, 2], [3, 4], [5, 6, 7]]
    fixed = LabelBuffer(5)                  # fewer rows added than reserved (skipped rows)
    for y in [torch.tensor(1.5), torch.tensor(2.5)]:
        fixed.add(y)
    assert isinstance(fixed.result(), Labels) and len(fixed.result()) == 2
