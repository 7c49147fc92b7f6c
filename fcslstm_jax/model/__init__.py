"""The networks: Ψ operators, the structured LSTM, FCN / FCSLSTM."""
