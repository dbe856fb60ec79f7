using NativeLora.Model;

namespace NativeLora.Data;

/// <summary>
/// One tokenized example: token ids and, per token, whether the loss is taken when predicting it
/// (false for prompt tokens when training on responses only).
/// </summary>
public sealed record TrainingExample(int[] Ids, bool[] Trainable)
{
    public int Length => Ids.Length;
    public int TrainableTargets => Trainable.Skip(1).Count(t => t);
}

/// <summary>
/// Turns examples into micro-batches. Packing (default): examples are laid end to end in rows of
/// at most maxSeqLen tokens; each keeps its own segment id, positions restart at 0, and attention
/// never crosses into a neighbour. Without packing: one example per row, rows of a micro-batch
/// padded to the longest, and examples grouped by length first so little is padding.
/// Labels are shifted here: the label of position t is token t+1 of the same example when that
/// token is trainable, else −100.
/// </summary>
public static class Batcher
{
    public static List<List<TrainingExample>> PackRows(IReadOnlyList<TrainingExample> examples, int maxSeqLen)
    {
        var rows = new List<List<TrainingExample>>();
        var current = new List<TrainingExample>();
        int used = 0;
        foreach (var e in examples)
        {
            if (e.Length > maxSeqLen) throw new ArgumentException($"an example of {e.Length} tokens exceeds max_seq_len {maxSeqLen} (clean the data first)");
            if (used + e.Length > maxSeqLen && current.Count > 0)
            {
                rows.Add(current);
                current = new List<TrainingExample>();
                used = 0;
            }
            current.Add(e);
            used += e.Length;
        }
        if (current.Count > 0) rows.Add(current);
        return rows;
    }

    /// <summary>Micro-batches of `microBatch` rows for one epoch, in the order given (shuffle before).</summary>
    public static List<TokenBatch> MakeBatches(IReadOnlyList<TrainingExample> examples, int maxSeqLen, int microBatch, bool packing)
    {
        List<List<TrainingExample>> rows;
        if (packing) rows = PackRows(examples, maxSeqLen);
        else
        {
            // group by length: sort within windows of 64 micro-batches so batches stay shuffled but similar in length
            int window = microBatch * 64;
            rows = new List<List<TrainingExample>>();
            for (int i = 0; i < examples.Count; i += window)
                rows.AddRange(examples.Skip(i).Take(window).OrderBy(e => e.Length).Select(e => new List<TrainingExample> { e }));
        }
        var batches = new List<TokenBatch>();
        for (int i = 0; i < rows.Count; i += microBatch)
            batches.Add(ToBatch(rows.GetRange(i, Math.Min(microBatch, rows.Count - i))));
        return batches;
    }

    public static TokenBatch ToBatch(IReadOnlyList<List<TrainingExample>> rows)
    {
        int seqLen = rows.Max(r => r.Sum(e => e.Length));
        int n = rows.Count * seqLen;
        var ids = new int[n];
        var labels = new int[n];
        var pos = new int[n];
        var seg = new int[n];
        Array.Fill(labels, -100);
        Array.Fill(seg, -1);
        for (int b = 0; b < rows.Count; b++)
        {
            int t = b * seqLen;
            for (int s = 0; s < rows[b].Count; s++)
            {
                var e = rows[b][s];
                for (int i = 0; i < e.Length; i++, t++)
                {
                    ids[t] = e.Ids[i];
                    pos[t] = i;
                    seg[t] = s;
                    labels[t] = i + 1 < e.Length && e.Trainable[i + 1] ? e.Ids[i + 1] : -100;
                }
            }
        }
        return new TokenBatch(rows.Count, seqLen, ids, labels, pos, seg);
    }
}
