using System.Runtime.InteropServices;

namespace NativeLora.Text;

/// <summary>
/// Turns generated token ids, fed one at a time, into text that is only ever appended to.
/// </summary>
/// <remarks>
/// A single token does not decode on its own: byte-level BPE (Llama 3, Qwen) and SentencePiece byte
/// fallback (<c>&lt;0xE2&gt;</c>, Mistral) split multi-byte characters across tokens, and SentencePiece
/// decoders drop a leading space at the start of a decode. So, as TGI and vLLM do, this decodes a short
/// window twice: the tokens already emitted since the last emission (<c>prefix</c>) and the same plus the
/// new ones. The new text is the difference, held back while it ends in U+FFFD (an incomplete
/// character). Concatenating every <see cref="Push"/> and the final <see cref="Flush"/> gives the
/// decode of the whole sequence.
/// </remarks>
public sealed class TokenStreamDecoder
{
    readonly HfTokenizer _tokenizer;
    readonly bool _skipSpecialTokens;
    readonly List<int> _ids = new();  // from the prefix offset on
    int _read;                        // _ids[.._read] were emitted; _ids[_read..] are pending
    string _prefixText;               // decode of _ids[.._read]

    /// <param name="tokenizer">The tokenizer that produced the ids.</param>
    /// <param name="skipSpecialTokens">Leave special tokens (e.g. end-of-turn) out of the text.</param>
    /// <param name="context">Ids already in the sequence (the prompt): its last few tokens give the first
    /// generated token its correct leading space. They are not emitted.</param>
    public TokenStreamDecoder(HfTokenizer tokenizer, bool skipSpecialTokens = true, ReadOnlySpan<int> context = default)
    {
        _tokenizer = tokenizer;
        _skipSpecialTokens = skipSpecialTokens;
        const int ContextTokens = 6; // enough for a word and any partial character before it
        _ids.AddRange(context[Math.Max(0, context.Length - ContextTokens)..]);
        _read = _ids.Count;
        _prefixText = Decode(_ids.Count);
    }

    string Decode(int count) => _tokenizer.Decode(CollectionsMarshal.AsSpan(_ids)[..count], _skipSpecialTokens);

    /// <summary>Adds one id; returns the text it completes ("" while a character is still incomplete).</summary>
    public string Push(int id)
    {
        _ids.Add(id);
        string text = Decode(_ids.Count);
        if (text.Length <= _prefixText.Length || text.EndsWith('\uFFFD')) return "";
        return Advance(text);
    }

    /// <summary>Returns the pending text at the end of generation, incomplete characters as U+FFFD.</summary>
    public string Flush()
    {
        string text = Decode(_ids.Count);
        return text.Length > _prefixText.Length ? Advance(text) : "";
    }

    string Advance(string text)
    {
        // The window's text starts with the prefix's text for these tokenizers' decoders (the same
        // slice TGI and vLLM take).
        string delta = text[_prefixText.Length..];
        _ids.RemoveRange(0, _read);  // the old pending tokens become the next prefix
        _read = _ids.Count;
        _prefixText = Decode(_read);
        return delta;
    }
}
