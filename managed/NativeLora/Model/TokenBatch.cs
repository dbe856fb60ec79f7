namespace NativeLora.Model;

/// <summary>
/// One micro-batch of token rows, host side: Batch rows of SeqLen tokens, flattened row-major.
/// Labels are already shifted (label[t] is the target of position t; −100 = no loss). Positions
/// restart at 0 for each packed sequence; Segments give each packed sequence of a row its own id
/// and −1 to padding (attention never crosses segments, padding attends nothing).
/// </summary>
public sealed record TokenBatch(int Batch, int SeqLen, int[] Ids, int[] Labels, int[] Positions, int[] Segments)
{
    public int Tokens => Batch * SeqLen;

    public void Validate()
    {
        if (Batch < 1 || SeqLen < 1) throw new ArgumentException($"a batch needs at least one row of one token, got {Batch}×{SeqLen}");
        foreach (var (a, name) in new[] { (Ids, "ids"), (Labels, "labels"), (Positions, "positions"), (Segments, "segments") })
            if (a.Length != Tokens) throw new ArgumentException($"batch {name} has {a.Length} entries, expected {Batch}×{SeqLen} = {Tokens}");
    }

    /// <summary>Rows of one unpacked sequence each: positions 0..T−1, one segment, next-token labels.</summary>
    public static TokenBatch FromSequences(int[][] rows)
    {
        int t = rows[0].Length;
        if (rows.Any(r => r.Length != t)) throw new ArgumentException("all rows must have the same length");
        var ids = rows.SelectMany(r => r).ToArray();
        var labels = new int[ids.Length];
        var pos = new int[ids.Length];
        for (int b = 0; b < rows.Length; b++)
            for (int i = 0; i < t; i++)
            {
                labels[b * t + i] = i + 1 < t ? rows[b][i + 1] : -100;
                pos[b * t + i] = i;
            }
        return new TokenBatch(rows.Length, t, ids, labels, pos, new int[ids.Length]);
    }
}
